"""Memcached over TLS with a real client: python-binary-memcached (Debian's python3-binary-memcached), the binary
protocol with SASL PLAIN over an ssl.SSLContext that trusts only the given CA and checks the host name.

Reads one JSON object on stdin (so no password is on a command line):
  {"server": "host:port", "username": ..., "password": ..., "ca": PEM, "ops": [["set", key, value], ["get", key]]}
and prints {"results": [...]}: set gives true or false, get the value or null. The client answers false or null
when the handshake is refused (it logs why on stderr instead of raising); a refused login gives {"error": why}.
"""

import json
import ssl
import sys

import bmemcached
from bmemcached.exceptions import MemcachedException

request = json.load(sys.stdin)
context = ssl.create_default_context(cadata=request["ca"])
context.minimum_version = ssl.TLSVersion.TLSv1_2
client = bmemcached.Client(
    (request["server"],), request["username"], request["password"], socket_timeout=5, tls_context=context
)
results = []
for op in request["ops"]:
    try:
        if op[0] == "set":
            results.append(bool(client.set(op[1], op[2])))
        elif op[0] == "get":
            results.append(client.get(op[1]))
        else:
            raise ValueError("unknown operation " + op[0])
    except MemcachedException as error:
        results.append({"error": str(error)})
client.disconnect_all()
print(json.dumps({"results": results}))
