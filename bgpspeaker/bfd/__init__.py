"""BFD beside ExaBGP: FRR's bfdd, alone (no zebra, no bgpd), supervised by the daemon.

ExaBGP has no BFD and never will (exabgp#1037), so the node runs FRR's bfdd for the
peers that name a `bfdProfile`; the router pairs its own BFD session with the BGP
session (`neighbor X bfd`) and drops the BGP session, and every route learned over it,
within the BFD detection time when the node stops answering. The daemon only renders
bfdd's config (`render`), runs and watches it (`runner`), and reads session state
(`state`, over bfdd's vty socket: `vty`). Without a BFD profile nothing here starts.
"""
