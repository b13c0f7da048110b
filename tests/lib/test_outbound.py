"""The outbound-URL guard: https only (http with DEBUG), no credentials, public addresses only
(checked on every address a name resolves to), numbers in disguise refused, the allow-list
exempting only the address rule; and `post` connecting to the checked address, never
resolving again, never following a redirect, with a timeout."""
import datetime
import socket
import ssl
import time

import pytest

from lifecycle.lib import outbound
from tests.lib.fakedns import FakeDNS
from tests.lib.receiver import Receiver

PUBLIC = "93.184.216.34"


@pytest.fixture
def dns(monkeypatch):
    dns = FakeDNS(monkeypatch)
    dns.set("hooks.example.com", PUBLIC)
    dns.set("internal.example.com", "10.0.0.1")
    dns.set("cgnat.example.com", "100.64.12.1")
    dns.set("split.example.com", PUBLIC, "10.0.0.1")  # one bad address among good ones is enough
    dns.set("v6.example.com", "2606:2800:220:1:248:1893:25c8:1946")
    dns.set("mapped.example.com", "::ffff:127.0.0.1")
    return dns


@pytest.fixture(autouse=True)
def no_allow_list(settings):
    settings.OUTBOUND_ALLOW_HOSTS = []
    settings.DEBUG = False


REFUSED = [
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a cloud metadata address"),
    ("http://127.0.0.1:6379/", "127.0.0.1 is a loopback address"),
    ("http://[::1]/", "::1 is a loopback address"),
    ("http://2130706433/", "2130706433 is an address written as a number"),
    ("http://0x7f000001/", "0x7f000001 is an address written as a number"),
    ("http://127.1/", "127.1 is an address written as a number"),
    ("http://0177.0.0.1/", "0177.0.0.1 is an address written as a number"),
    ("http://localhost./", "localhost names this machine"),
    ("http://LOCALHOST/", "localhost names this machine"),
    ("http://api.localhost/", "api.localhost names this machine"),
    ("http://internal.example.com/", "internal.example.com (it resolves to 10.0.0.1) is a private address"),
    ("http://split.example.com/", "split.example.com (it resolves to 10.0.0.1) is a private address"),
    ("http://cgnat.example.com/", "a shared (carrier-grade NAT) address"),
    ("http://mapped.example.com/", "a loopback address (127.0.0.1, inside an IPv6 address)"),
    ("ftp://hooks.example.com/", "ftp:// is not accepted"),
    ("file:///etc/passwd", "file:// is not accepted"),
    ("gopher://hooks.example.com/", "gopher:// is not accepted"),
    ("hooks.example.com/hook", "a URL without a scheme is not accepted"),
    ("https://user:secret@hooks.example.com/", "credentials"),
    ("https://user@hooks.example.com/", "credentials"),
    ("https://@hooks.example.com/", "credentials"),
    ("http://[::ffff:127.0.0.1]/", "a loopback address (127.0.0.1, inside an IPv6 address)"),
    ("http://[::ffff:a9fe:a9fe]/", "a cloud metadata address"),
    ("http://100.64.0.1/", "a shared (carrier-grade NAT) address"),
    ("http://100.100.100.200/", "a cloud metadata address"),
    ("http://0.0.0.0/", "the unspecified address"),
    ("http://[::]/", "the unspecified address"),
    ("http://[fd00::1]/", "a private address"),
    ("http://[fd00:ec2::254]/", "a cloud metadata address"),
    ("http://metadata.google.internal/computeMetadata/v1/", "metadata.google.internal is a cloud metadata service"),
    ("http://metadata.google.internal./", "metadata.google.internal is a cloud metadata service"),
    ("http://168.63.129.16/", "a cloud metadata address"),
    ("http://224.0.0.1/", "a multicast address"),
    ("http://[ff02::1]/", "a multicast address"),
    ("http://10.1.2.3/", "a private address"),
    ("http://172.16.0.1/", "a private address"),
    ("http://192.168.1.10/", "a private address"),
    ("http://169.254.1.1/", "a link-local address"),
    ("http://[fe80::1%25eth0]/", "a link-local address"),
    ("http://[2002:7f00:1::]/", "a loopback address (127.0.0.1, inside an IPv6 address)"),  # 6to4
    ("http://[64:ff9b::a00:1]/", "a private address (10.0.0.1, inside an IPv6 address)"),  # NAT64
    ("http://192.0.2.1/", "a private address"),  # documentation range: never a real receiver
    ("http://intranet/", "intranet is not a fully qualified name"),
    ("http://nowhere.example.com/", "nowhere.example.com does not resolve"),
    ("http://bad_host..example.com/", "is not a valid host name"),
    ("http://hooks.example.com:99999/", "The port must be a number from 1 to 65535"),
    ("http://hooks.example.com:0/", "The port must be a number from 1 to 65535"),
    ("http://hooks.example.com:http/", "The port must be a number from 1 to 65535"),
    ("http://hooks.exa mple.com/", "spaces or control characters"),
    ("http://hooks.example.com/\tx", "spaces or control characters"),
    ("http://[::1/", "not a valid URL"),
    ("http:///path-only", "names no host"),
    ("", "Give a URL"),
    ("https://hooks.example.com/" + "x" * 2000, "at most 2000 characters"),
]


@pytest.mark.parametrize("url, reason", REFUSED, ids=[url[:60] for url, _ in REFUSED])
def test_refused_with_the_reason(dns, url, reason):
    # http allowed here, so that what is refused is the address, not the scheme.
    with pytest.raises(outbound.Refused) as refused:
        outbound.check_url(url, allow_http=True)
    assert reason in str(refused.value)


def test_plain_http_needs_debug(dns, settings):
    with pytest.raises(outbound.Refused, match="Use an https URL: plain http is accepted only while DEBUG is on"):
        outbound.check_url("http://hooks.example.com/")
    settings.DEBUG = True
    assert outbound.check_url("http://hooks.example.com/").scheme == "http"


def test_a_public_url_passes_with_what_to_send(dns):
    target = outbound.check_url("https://Hooks.Example.com./in/lifecycle?team=ml#ignored")
    assert (target.scheme, target.host, target.port, target.path, target.addresses) == (
        "https", "hooks.example.com", 443, "/in/lifecycle?team=ml", (PUBLIC,))
    assert outbound.check_url("https://hooks.example.com:8443").path == "/"
    assert outbound.check_url("https://v6.example.com/").addresses == ("2606:2800:220:1:248:1893:25c8:1946",)
    assert outbound.check_url(f"https://{PUBLIC}/x").addresses == (PUBLIC,)
    assert outbound.check_url("https://[2606:2800:220:1:248:1893:25c8:1946]/").host == "2606:2800:220:1:248:1893:25c8:1946"


def test_an_international_name_is_resolved_in_its_ascii_form(dns):
    dns.set("xn--bcher-kva.example.com", PUBLIC)
    assert outbound.check_url("https://bücher.example.com/").host == "xn--bcher-kva.example.com"
    assert dns.asked == ["xn--bcher-kva.example.com"]


def test_the_allow_list_exempts_only_the_address_rule(dns, settings):
    settings.OUTBOUND_ALLOW_HOSTS = ["127.0.0.1", "Receiver.Internal.", "localhost", "[::1]"]
    dns.set("receiver.internal", "10.0.0.5")
    assert outbound.check_url("http://127.0.0.1:8080/", allow_http=True).addresses == ("127.0.0.1",)
    assert outbound.check_url("https://receiver.internal/").addresses == ("10.0.0.5",)
    assert outbound.check_url("https://[::1]:8443/").addresses == ("::1",)
    with pytest.raises(outbound.Refused, match="Use an https URL"):
        outbound.check_url("http://127.0.0.1:8080/")  # DEBUG off: the scheme rule still holds
    with pytest.raises(outbound.Refused, match="credentials"):
        outbound.check_url("https://u:p@127.0.0.1/")
    with pytest.raises(outbound.Refused, match="ftp://"):
        outbound.check_url("ftp://127.0.0.1/")
    with pytest.raises(outbound.Refused, match="loopback"):
        outbound.check_url("https://127.0.0.2/")  # another loopback address is not on the list
    assert "127.0.0.1" in outbound.check_url("https://localhost/").addresses  # exempt from the name rules too


def test_the_allow_list_is_empty_unless_configured():
    from lifecycle import settings as project_settings

    assert project_settings.OUTBOUND_ALLOW_HOSTS == []


# --- post ---------------------------------------------------------------------------------------


def test_post_connects_to_the_checked_address_without_resolving_again(dns, settings):
    settings.OUTBOUND_ALLOW_HOSTS = ["receiver.example.com"]
    # Checked while it pointed here; by the time of the request it would point elsewhere.
    dns.sequence("receiver.example.com", ["127.0.0.1"], ["10.9.9.9"])
    with Receiver() as receiver:
        target = outbound.check_url(receiver.url("receiver.example.com"), allow_http=True)
        response = outbound.post(target, b'{"a":1}', {"Content-Type": "application/json"}, timeout=5)
    assert (response.status, response.address) == (200, "127.0.0.1")
    assert dns.asked == ["receiver.example.com"]  # once, by the check
    [request] = receiver.requests
    assert request["headers"]["host"] == f"receiver.example.com:{receiver.port}"
    assert (request["path"], request["body"]) == ("/hooks/lifecycle?source=registry", b'{"a":1}')


def test_post_returns_a_redirect_without_following_it(dns, settings):
    settings.OUTBOUND_ALLOW_HOSTS = ["127.0.0.1"]
    with Receiver(statuses=(302,), location="http://169.254.169.254/latest/meta-data/") as receiver:
        target = outbound.check_url(receiver.url(), allow_http=True)
        assert outbound.post(target, b"{}", {}, timeout=5).status == 302
    assert len(receiver.requests) == 1


def test_post_tries_the_next_checked_address_when_one_refuses(dns, settings):
    settings.OUTBOUND_ALLOW_HOSTS = ["two.example.com"]
    with Receiver() as receiver:
        # Nothing listens on 127.0.0.2 at the receiver's port: that connection is refused.
        dns.set("two.example.com", "127.0.0.2", "127.0.0.1")
        target = outbound.check_url(receiver.url("two.example.com"), allow_http=True)
        assert outbound.post(target, b"{}", {}, timeout=5).address == "127.0.0.1"
    assert len(receiver.requests) == 1


def test_post_gives_up_after_the_timeout(dns, settings):
    settings.OUTBOUND_ALLOW_HOSTS = ["127.0.0.1"]
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # accepts connections (the kernel does) and never answers
        target = outbound.check_url(f"http://127.0.0.1:{silent.getsockname()[1]}/", allow_http=True)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            outbound.post(target, b"{}", {}, timeout=0.5)
        assert time.monotonic() - started < 5


def self_signed(tmp_path, name):
    """A certificate for `name` signed by its own key: (server context, client context trusting it)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_file, key_file)
    return server, ssl.create_default_context(cafile=str(cert_file))


def test_https_is_verified_against_the_name_while_connecting_to_the_checked_address(dns, settings, tmp_path):
    settings.OUTBOUND_ALLOW_HOSTS = ["receiver.example.com", "other.example.com"]
    dns.set("receiver.example.com", "127.0.0.1")
    dns.set("other.example.com", "127.0.0.1")
    server_tls, trusting = self_signed(tmp_path, "receiver.example.com")
    with Receiver(tls=server_tls) as receiver:
        target = outbound.check_url(receiver.url("receiver.example.com"))
        with pytest.raises(ssl.SSLCertVerificationError):
            outbound.post(target, b"{}", {}, timeout=5)  # by default only the system's CAs are trusted
        assert outbound.post(target, b"{}", {}, timeout=5, tls_context=trusting).status == 200
        other = outbound.check_url(receiver.url("other.example.com"))  # same address, a name the cert lacks
        with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
            outbound.post(other, b"{}", {}, timeout=5, tls_context=trusting)
    assert len(receiver.requests) == 1 and receiver.requests[0]["headers"]["host"] == f"receiver.example.com:{receiver.port}"
