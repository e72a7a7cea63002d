"""The correlator: per client, name → CNAME → address → flow, and capture that flow."""
