"""Flow agent: who talked to whom, by rules, IPv4 and IPv6, into Redis (ShoDoHFlo keys)."""
