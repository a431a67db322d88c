"""Network domain: bridges and the warm TAP pool (plan, state, observe, driver; rtnl, names, marks)."""
