"""rtnetlink, spoken directly: pure messages (messages.py), the socket calls (rtnl.py)."""
