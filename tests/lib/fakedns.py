"""A stand-in for DNS, which is outside this machine: socket.getaddrinfo answers the names a
test gives, in order when it gives several answers (a name that rebinds). Addresses written
as addresses, and localhost, go to the real resolver (Redis at 127.0.0.1 and a live server
on localhost must still connect); any other name does not resolve."""
import ipaddress
import socket


class FakeDNS:
    def __init__(self, monkeypatch):
        self.answers = {}
        self.asked = []
        self._real = socket.getaddrinfo
        monkeypatch.setattr(socket, "getaddrinfo", self.getaddrinfo)

    def set(self, name, *addresses):
        """`name` resolves to `addresses`, every time."""
        self.answers[name] = [list(addresses)]

    def sequence(self, name, *answers):
        """`name` resolves to each answer (a list of addresses) in turn; the last one stays."""
        self.answers[name] = [list(answer) for answer in answers]

    def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):
        if host in self.answers:
            self.asked.append(host)
            queue = self.answers[host]
            addresses = queue.pop(0) if len(queue) > 1 else queue[0]
            return [self._info(address, port) for address in addresses]
        if host == "localhost":
            return self._real(host, port, family, type, proto, flags)
        try:
            ipaddress.ip_address(host.split("%", 1)[0] if isinstance(host, str) else host)
        except ValueError:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None
        return self._real(host, port, family, type, proto, flags)

    @staticmethod
    def _info(address, port):
        if ipaddress.ip_address(address).version == 6:
            return (socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port or 0, 0, 0))
        return (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port or 0))
