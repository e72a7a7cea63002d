"""Traffic for the live test, run inside a namespace: `serve B4 B6` or `client B4 B6`.

`serve` echoes on TCP and UDP port SERVICE_PORT / ECHO_PORT of both addresses
until killed. `client` talks to them with payload, then provokes a TCP RST
(connect to a closed port) and an ICMP port unreachable (UDP to a closed port)
from fixed local ports, so the test knows every key to expect.
"""

from __future__ import annotations

import socket
import sys
import threading

TCP_PORT = 9090
UDP_PORT = 5353
CLOSED_TCP = 9
CLOSED_UDP = 7777
# Local ports for the RST and ICMP probes, per address family.
RST_PORT = {socket.AF_INET: 40001, socket.AF_INET6: 40011}
ICMP_PORT = {socket.AF_INET: 40002, socket.AF_INET6: 40012}
TIMEOUT = 5.0


def family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def serve_tcp(sock: socket.socket) -> None:
    while True:
        conn, _ = sock.accept()
        with conn:
            conn.settimeout(TIMEOUT)
            data = conn.recv(4096)
            conn.sendall(data)


def serve_udp(sock: socket.socket) -> None:
    while True:
        data, peer = sock.recvfrom(4096)
        sock.sendto(data, peer)


def serve(addresses: list[str]) -> None:
    threads = []
    for address in addresses:
        tcp = socket.socket(family(address), socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((address, TCP_PORT))
        tcp.listen(8)
        udp = socket.socket(family(address), socket.SOCK_DGRAM)
        udp.bind((address, UDP_PORT))
        threads += [
            threading.Thread(target=serve_tcp, args=(tcp,), daemon=True),
            threading.Thread(target=serve_udp, args=(udp,), daemon=True),
        ]
    for thread in threads:
        thread.start()
    print("ready", flush=True)
    threading.Event().wait()


def client(addresses: list[str]) -> None:
    for address in addresses:
        fam = family(address)
        with socket.create_connection((address, TCP_PORT), timeout=TIMEOUT) as conn:
            conn.sendall(b"hello flow agent " * 8)
            assert conn.recv(4096)
        with socket.socket(fam, socket.SOCK_DGRAM) as udp:
            udp.settimeout(TIMEOUT)
            udp.sendto(b"ping", (address, UDP_PORT))
            assert udp.recvfrom(4096)[0] == b"ping"
        with socket.socket(fam, socket.SOCK_STREAM) as probe:
            probe.settimeout(TIMEOUT)
            # The earlier connection may have left this port in TIME_WAIT.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("", RST_PORT[fam]))
            try:
                probe.connect((address, CLOSED_TCP))
                raise AssertionError("closed TCP port accepted a connection")
            except ConnectionRefusedError:
                pass
        with socket.socket(fam, socket.SOCK_DGRAM) as probe:
            probe.settimeout(TIMEOUT)
            probe.bind(("", ICMP_PORT[fam]))
            probe.connect((address, CLOSED_UDP))
            probe.send(b"anyone?")
            try:
                probe.recv(100)
                raise AssertionError("closed UDP port answered")
            except ConnectionRefusedError:
                pass
    print("done", flush=True)


if __name__ == "__main__":
    {"serve": serve, "client": client}[sys.argv[1]](sys.argv[2:])
