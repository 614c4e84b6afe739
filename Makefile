# The two commands a newcomer runs on a fresh Debian machine (as root):
#   make demo   - the multi-cluster failover lab, end to end, with live traffic
#   make test   - the whole test suite (what CI runs, through .ci/run)
# Both set everything up first: Debian packages (frr, bird2, ...) and the Python venv.

VENV    ?= .venv
PY      := $(VENV)/bin/python
DEBS    := frr bird2 iproute2 curl procps
STAMP   := $(VENV)/.installed

.PHONY: setup system-packages test demo bench bench-smoke clean

setup: system-packages $(STAMP)

# apt starts no daemons here (no systemd); the lab runs its own FRR/BIRD per namespace.
system-packages:
	@dpkg -s $(DEBS) >/dev/null 2>&1 || { \
	  echo "installing Debian packages: $(DEBS)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBS) >/dev/null; }

$(STAMP): setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

test: setup
	$(PY) -m pytest -q -p no:cacheprovider

demo: setup
	$(PY) -m integration.demo

bench: setup
	$(PY) -m integration.bench

bench-smoke: setup
	$(PY) -m integration.bench --small

clean:
	rm -rf $(VENV) build *.egg-info
