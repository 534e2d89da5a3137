# Minimal MQTT 3.1.1 publisher (QoS 1, waits for every PUBACK) for the
# label-bound measurement: N messages with distinct huge label values.
import socket, struct, sys
def rl(n):
    out = b""
    while True:
        b = n % 128; n //= 128
        out += bytes([b | (0x80 if n else 0)])
        if not n: return out
def s(x): return struct.pack(">H", len(x)) + x
port, n, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
c = socket.create_connection(("127.0.0.1", port))
var = s(b"MQTT") + bytes([4, 2]) + struct.pack(">H", 60) + s(b"measure-pub")
c.sendall(bytes([0x10]) + rl(len(var)) + var)
assert c.recv(4)[0] == 0x20
for i in range(n):
    payload = b'{"v":1,"serial":"%03d%s"}' % (i, b"s" * size)
    body = s(b"sensors/id%d/state" % (i % 3)) + struct.pack(">H", i + 1) + payload
    c.sendall(bytes([0x32]) + rl(len(body)) + body)
acks = 0
buf = b""
while acks < n:
    buf += c.recv(65536)
    while len(buf) >= 4:
        assert buf[0] == 0x40, buf[:4]
        buf = buf[4:]; acks += 1
c.sendall(bytes([0xE0, 0]))
print("published", n)
