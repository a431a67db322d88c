"""Fleet tests: a real etcd and real agents, each host in a network namespace of its own."""
