"""The fleet: specs in etcd, VMs placed onto hosts by transactions, an agent per host that converges
its share and reports back (keys, state, plan: pure; observe, driver, agent: the store and the host)."""
