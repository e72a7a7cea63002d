"""The ground every part of pcapd stands on: config, requests, result events,
logs, secrets and the Redis connection. It imports nothing from the layers
above it (`triggers`, `uploaders`, `agents`, the rest of `pcapd`)."""
