"""The ShoDoHFlo Redis key schema, and what a response or flow writes in it.

This is the one module that spells a key. Every write refreshes
`EXPIRE key ttl` (ShoDoHFlo's TTL_GRACE, 900 s). Values written by `append`
are `;member;` strings concatenated, each member present once.

Readers (agents/reader.py) take their patterns and key parsing from here too.
With `index=True` the writer also keeps, per client, a set `<client>;index`
of the keys it created for that client (SADD only when a key is new, so the
cost is one command per new key, not per write). ShoDoHFlo's app ignores the
suffix; ShoDoHFlo's own agents do not write it, so readers must work without.

The writer (agents/redis_writer.py) sends the counters as plain SET NX EX,
INCRBY and EXPIRE commands and the appends through `APPEND_SCRIPT`, spelled here with
the schema it writes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the writer imports APPEND_SCRIPT from here
    from agents.write_queue import OpSink

# What the writer is asked to do with a key (`Op`): an int is INCRBY that
# amount (INCR = 1), a str is a member to append if absent. Typed, so no
# marker can be malformed: the writer's hot loop never parses one.
Op = int | str
INCR = 1

CLIENT = "client"
DNS, CNAME, NX, FLOW, PEER, RST, ICMP = "dns", "cname", "nx", "flow", "peer", "rst", "icmp"
INDEX = "index"
# Fields between the client and the kind, per kind.
_ARITY = {DNS: 1, CNAME: 1, NX: 1, FLOW: 2, PEER: 1, RST: 2, ICMP: 3, INDEX: 0}
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def client_key(client: str) -> str:
    return f"client;{client}"


def dns_key(client: str, address: str) -> str:
    return f"{client};{address};dns"


def cname_key(client: str, target: str) -> str:
    return f"{client};{target};cname"


def nx_key(client: str, qname: str) -> str:
    return f"{client};{qname};nx"


def flow_key(client: str, service: str, port: int) -> str:
    return f"{client};{service};{port};flow"


def peer_key(a: str, b: str) -> str:
    return f"{a};{b};peer"


def rst_key(dst: str, src: str, client_port: int, remote_port: int) -> str:
    return f"{dst};{src};{client_port}:{remote_port};rst"


def icmp_key(dst: str, bounce_dst: str, sport: int, dport: int, code: int) -> str:
    return f"{dst};{bounce_dst};{sport}:{dport};{code};icmp"


def index_key(client: str) -> str:
    return f"{client};{INDEX}"


def index_of(key: str) -> str:
    """The index set of the client a key belongs to (its first field)."""
    return index_key(key.split(";", 1)[0])


def glob_escape(text: str) -> str:
    """`text` matched literally by SCAN MATCH (names may hold `*`, `?`, `[`)."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def clients_pattern() -> str:
    return client_key("*")


def client_keys_pattern(client: str) -> str:
    return f"{glob_escape(client)};*"


def kind_pattern(kind: str, *fields: str) -> str:
    """Keys of `kind` whose fields after the client start with `fields`."""
    middle = "".join(f";{glob_escape(f)}" for f in fields)
    rest = ";*" * (_ARITY[kind] - len(fields))
    return f"*{middle}{rest};{kind}"


def split_fields(text: str) -> list[str]:
    """Split on `;`, keeping `\\;` (an escaped `;` inside a DNS name) whole."""
    if "\\" not in text:
        return text.split(";")
    fields, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == ";":
            fields.append("".join(current))
            current = []
        else:
            current.append(char)
    fields.append("".join(current))
    return fields


@dataclass(frozen=True, slots=True)
class Key:
    """A parsed key: `kind`, the client it belongs to, and the fields between."""

    kind: str
    client: str
    fields: tuple[str, ...] = ()


def parse_key(text: str) -> Key | None:
    """None for keys outside the schema (other applications share the Redis)."""
    parts = split_fields(text)
    if len(parts) == 2 and parts[0] == CLIENT:
        return Key(CLIENT, parts[1])
    kind = parts[-1]
    if kind == NX and len(parts) > 3 and parts[0]:
        # nxdomain_writes stores `;` in the name unescaped, as ShoDoHFlo does.
        return Key(kind, parts[0], (";".join(parts[1:-1]),))
    if _ARITY.get(kind) != len(parts) - 2 or not parts[0]:
        return None
    return Key(kind, parts[0], tuple(parts[1:-1]))


def members(value: str) -> list[str]:
    """The members of an append-if-absent value `;a;;b;`."""
    return [m for m in split_fields(value) if m]


@dataclass(frozen=True, slots=True)
class AnswerWrites:
    """What one answer (or NXDOMAIN) writes, for any client: each key's text
    after the client (`dns_key("", address)`), then the ops (`args`): one
    per suffix, the last for `client;<c>`. Made once per distinct answer
    (agents.dnswire keeps them with its parse cache), written per client by
    `record_writes`."""

    suffixes: tuple[str, ...]
    args: tuple[Op, ...]
    count: int


def answer_writes(chain: Sequence[str], addresses: Sequence[str]) -> AnswerWrites | None:
    """ShoDoHFlo's writes for one NOERROR answer, None for none at all.

    `chain` starts at the question name and follows the CNAMEs; `addresses`
    are the A/AAAA texts owned by its end. As in ShoDoHFlo (dnstap_agent's
    `MyMapper.map_fields` sends one datagram per final address, dns_agent's
    `answer_to_redis_` writes each): `client;<c>` gains 1 per distinct
    address, and an answer without an address (NODATA, a CNAME chain that
    ends nowhere) writes nothing at all, no `cname` key either. Shared by
    every agent that turns DNS answers into keys.
    """
    count = len(addresses)
    if not count:
        return None
    if count > 1:  # dnspython's rrsets hold each address once
        count = len(set(addresses))
    suffixes = [cname_key("", target) for target in chain[1:]]
    ops: list[Op] = list(chain[:-1])
    suffixes += [dns_key("", address) for address in addresses]  # a repeat appends nothing
    ops += [chain[-1]] * len(addresses)
    ops.append(count)  # one INCRBY, the same value as ShoDoHFlo's INCRs
    return AnswerWrites(tuple(suffixes), tuple(ops), count)


def nxdomain_writes(qname: str) -> AnswerWrites:
    """`client;<c>` and `<c>;<qname>;nx` INCR, for every NXDOMAIN (no dedup).

    The name is dnspython's text form with `\\;` unescaped to `;`, the key
    ShoDoHFlo's dns_agent `nx_to_redis` writes: a reader must take the client
    from the left and `nx` from the right, as the name may hold `;`.
    """
    return AnswerWrites((nx_key("", qname.replace("\\;", ";")),), (INCR, INCR), 1)


def record_writes(writer: OpSink, client: str, writes: AnswerWrites) -> None:
    """`writes` for `client`, queued with one call, as this runs once per
    response on the capture path."""
    keys = [*map(client.__add__, writes.suffixes), client_key(client)]  # no frame per call
    writer.extend(keys, writes.args)


# A counter's SET NX EX made it at "0", then its INCRBY was refused: this
# takes the "0" (a value ShoDoHFlo never writes) away again, unless a
# writer counted it meanwhile.
UNSET_ZERO_SCRIPT = (
    "if redis.call('GET', KEYS[1]) == '0' then return redis.call('DEL', KEYS[1]) end return 0"
)

# Append-if-absent for KEYS[i] the member ARGV[i+2]; ARGV[1] is the TTL,
# ARGV[2] "1" to return the keys it created (for the writer to add to their
# clients' index sets), "2" to return also each key whose value begins with
# the key's members found in it, in their order: what a call of them that
# created the key left (sent again after its reply was lost, the call finds
# what it made the first time; a key that held something else before is
# not returned, as a clean run would not return it; one another writer
# made with the same first member(s) is, and indexed as made here: the
# writer asks "2" only after a call was written and its reply lost,
# `redis_replies.lost_in_flight`, never after a "not now" or no send). A
# script, as GET + find + APPEND must be atomic; the counters go as plain
# INCRBY commands beside it (through a script an INCR and its EXPIRE cost
# Redis ~6.9 us here, as commands ~5.4). The writer merges a window's writes first
# (agents/write_window.py): a key's members are adjacent, so the script
# GETs it once, APPENDs what is absent in one call and EXPIREs once
# (`SET ... EX` for a new key costs Redis more here than APPEND + EXPIRE);
# each member is still looked for in the value as the ones before it left
# it, so the result is what one append at a time gives.
# A key absent with one member, the common case, is APPENDed at once: what
# the loop gives it, for ~10% less of Redis's time per entry here.
# pcall: an error (a key holding another type: WRONGTYPE; Redis at
# maxmemory: OOM; a replica: READONLY) costs that key's entries, never the
# rest of the call, and its TTL is left alone; the writer tells a refusal
# (counted) from a "not now" (sent again) by each entry's error. An EXPIRE
# refused after its APPEND ran (an ACL allowing one and not the other)
# leaves the key without a TTL: its error is returned, for the writer to
# count and log as the counters' refused EXPIREs. Returns {the failed
# entries' indexes, each one's error, each refused EXPIRE's error, the
# created keys...}.
# On a Redis Cluster the writer calls it once per hash slot with that
# slot's keys only.
APPEND_SCRIPT = """
local ttl = tonumber(ARGV[1])
local report = ARGV[2] ~= '0'
local again = ARGV[2] == '2'
local call = redis.pcall
local find = string.find
local failed = {}
local errors = {}
local untimed = {}
local result = {failed, errors, untimed}
local n = #KEYS
local i = 1
while i <= n do
  local key = KEYS[i]
  local last = i
  while last < n and KEYS[last + 1] == key do last = last + 1 end
  local reply = call('GET', key)
  local created = false
  if not reply and last == i then
    reply = call('APPEND', key, ';' .. ARGV[i + 2] .. ';')
    created = true
  elseif type(reply) ~= 'table' then
    local value = reply or ''
    local added = {}
    local found = ''
    for k = i + 2, last + 2 do
      local item = ';' .. ARGV[k] .. ';'
      if not find(value, item, 1, true) then
        value = value .. item
        added[#added + 1] = item
      elseif again and reply and find(reply, item, 1, true)
          and not find(found, item, 1, true) then
        found = found .. item
      end
    end
    if found ~= '' then
      created = string.sub(reply, 1, #found) == found
    end
    if #added > 0 then
      created = created or not reply
      reply = call('APPEND', key, table.concat(added))
    end
  end
  if type(reply) == 'table' and reply.err then
    for k = i, last do
      failed[#failed + 1] = k
      errors[#errors + 1] = reply.err
    end
  else
    local timed = call('EXPIRE', key, ttl)
    if type(timed) == 'table' and timed.err then untimed[#untimed + 1] = timed.err end
    if created and report then result[#result + 1] = key end
  end
  i = last + 1
end
return result
"""


def index_commands(created: list[str], ttl: int) -> list[tuple[str, tuple[str | int, ...]]]:
    """(index key, command) adding each newly created key to its client's
    index set and refreshing the set's expiry."""
    commands: list[tuple[str, tuple[str | int, ...]]] = []
    for key in created:
        index = index_of(key)
        commands += [(index, ("SADD", index, key)), (index, ("EXPIRE", index, ttl))]
    return commands
