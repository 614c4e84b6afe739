# The two commands a newcomer runs on a fresh Debian machine (as root):
#   make demo   - the multi-cluster failover lab, end to end, with live traffic
#   make test   - the whole test suite (what CI runs, through .ci/run)
#   make image  - the container image (Containerfile), built here without a registry; prints its size
# Each sets everything up first: Debian packages (frr, bird2, ...) and the Python venv.

VENV    ?= .venv
PY      := $(VENV)/bin/python
# podman and debootstrap: `make image` and the image test (integration/test_image.py).
DEBS    := frr bird2 iproute2 curl procps podman debootstrap prometheus nftables
STAMP   := $(VENV)/.installed

.PHONY: setup system-packages test demo bench bench-smoke image clean

setup: system-packages $(STAMP)

# apt starts no daemons here (no systemd); the lab runs its own FRR/BIRD per namespace, and its
# own Prometheus (prometheus also brings promtool) on a namespace's loopback: integration/lab/prometheus.py.
system-packages:
	@dpkg -s $(DEBS) >/dev/null 2>&1 || { \
	  echo "installing Debian packages: $(DEBS)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBS) >/dev/null; }

# Every Python dependency is pinned by constraints.txt (the image uses the same file).
$(STAMP): setup.cfg pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

test: setup
	$(PY) -m pytest -q -p no:cacheprovider

demo: setup
	$(PY) -m integration.demo

bench: setup
	$(PY) -m integration.bench

bench-smoke: setup
	$(PY) -m integration.bench --small

# BASE=docker.io/library/python:3.11-slim-bookworm builds on the public base instead of the
# Debian-made one (made once with debootstrap and kept in podman's store).
image: setup
	$(PY) -m integration.image $(if $(BASE),--base $(BASE))

clean:
	rm -rf $(VENV) build *.egg-info .cache/image
