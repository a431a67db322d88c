"""Adapters to outside systems, one per system, no policy: QEMU (qemu/), ext4 and disk images (ext4/),
rtnetlink (netlink/), nftables (nft), kernel settings (sysctl), TAP devices (tun), SSH (ssh) and etcd
(etcd). The domains' drivers and observers use them; planners never do."""
