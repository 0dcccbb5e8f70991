"""Privacy: DP events and accountants, the signed ledger, secret noise, and the site's own policy."""
