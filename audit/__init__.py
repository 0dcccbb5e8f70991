"""The auditor's tools: verify ledgers and recompute privacy spend without trusting anyone."""
