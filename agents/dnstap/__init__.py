"""The dnstap agent: BIND and Unbound send dnstap over Frame Streams; the
agent writes who looked up which name and got which address to Redis, in
ShoDoHFlo's key schema (`agents.store`)."""
