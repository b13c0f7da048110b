"""PII and secret detection for dataset ingest: find, redact, mask, report.

    from lifecycle.datasets import pii

    matches = pii.scan("mail jane@example.com or call +44 20 7946 0958")
    pii.redact(text, matches)          # "mail <EMAIL> or call <PHONE>"
    [pii.mask(m) for m in matches]     # ["j***@e***.com", "+** ** **** **58"]

Each detector is a class with one job, `find(text)`, and one cheap pre-check, `wanted(rows)`:
whether a row's shape (digits -> 0, letters -> A/a, one C-level pass) could hold its kind at
all. Ingest scans every row of an upload, so `scan_many()` asks that of a whole batch at once
with numpy; a clean row costs its share of a few passes. The rules and their known limits are
in docs/pii.md.
"""
import ipaddress
import math
import re
import unicodedata
from collections import Counter
from functools import lru_cache
from typing import NamedTuple

import numpy as np
from stdnum import iban as stdnum_iban, luhn
from stdnum.us import ssn as stdnum_ssn


class PiiMatch(NamedTuple):
    kind: str
    start: int
    end: int
    value: str


_SHAPE = str.maketrans("0123456789" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ" + "abcdefghijklmnopqrstuvwxyz",
                       "0" * 10 + "A" * 26 + "a" * 26)


def shape_of(text):
    """"Call 020 7946" -> "Aaaa 000 0000": cheap substring tests stand in for regex searches."""
    return text.translate(_SHAPE)


def _rx(pattern):
    # ASCII: \d and \w mean [0-9] and [A-Za-z0-9_], the same classes shape_of() sees.
    return re.compile(pattern, re.ASCII)


def _digits(value):
    return "".join(ch for ch in value if ch.isdigit())


def _context_before(text, start, pattern, window):
    return pattern.search(text, max(0, start - window), start) is not None


class Detector:
    """One kind of PII. `find(text)` yields a PiiMatch for each match of `patterns` (its group 1
    where the regex has one) that `valid` accepts; `wanted(rows)` is the cheap pre-check."""

    kind = ""
    priority = 0  # breaks ties between overlapping matches of equal length: higher is more specific
    patterns = ()

    @property
    def placeholder(self):
        return f"<{self.kind}>"

    def wanted(self, rows):
        """Whether `find` may find anything in `rows`: a _Batch (a bool per text) or one _Text
        (a bool). Both answer the same questions (has, count, non_ascii), so one pre-check
        serves scan() and scan_many(). False only where `find` certainly finds nothing."""
        return True

    def wants(self, text, shape):
        """`wanted` for one text, whose shape is `shape`."""
        return bool(self.wanted(_Text(text, shape)))

    def find(self, text, shape=None):
        """PiiMatch for each hit; `shape` is shape_of(text) when the caller has it already."""
        for pattern in self.patterns:
            group = min(pattern.groups, 1)
            for m in pattern.finditer(text):
                if self.valid(m.group(group), text, m.start(group)):
                    yield self._match(text, m.start(group), m.end(group))

    def valid(self, value, text, start):
        """Whether `value`, a match at `start` in `text`, is the kind (a checksum, its context)."""
        return True

    def _match(self, text, start, end):
        return PiiMatch(self.kind, start, end, text[start:end])


# --- EMAIL -------------------------------------------------------------------------------------

class EmailDetector(Detector):
    kind = "EMAIL"
    priority = 60
    patterns = (_rx(r"(?<![\w.%+-])[A-Za-z0-9][\w.%+-]{0,63}"
                    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"),)

    def wanted(self, rows):
        return rows.has(("@",))

    def valid(self, value, text, start):
        return ".." not in value


# --- PHONE -------------------------------------------------------------------------------------

# A phone number needs phone structure: a + or 00 country prefix, a North American 3-3-4
# grouping, a trunk-0 grouping (020 7946 0958), or a phone keyword in front. A bare digit
# run ("order 12345678"), a date (2024-01-15) or a version (10.0.19041.1) is not enough.
# A 00 or trunk-0 number never continues a group of four: "DE89 3704 0044 0532" is not 0044.
_DATE_START = _rx(r"\d{1,4}([-/.])\d{1,2}\1\d{2,4}(?!\d)")  # 2024-01-15, 15.01.2024, 01/15/24
_PHONE_END = r"(?![\w-]|[.:]\d)"
_PHONE_SEPARATOR = _rx(r"[ ().-]")
_PHONE_KEYWORDS = re.compile("phone|tel|mob|cell|fax|call|whatsapp|sms").search  # one pass, not eight `in`s


class PhoneDetector(Detector):
    kind = "PHONE"
    priority = 40
    # (shape hints: the regex runs only if the row's shape holds one; the regex; the fewest and
    # most digits, counted after a leading + or 00). Digit runs are possessive (\d++) so that a
    # long run cannot make the engine backtrack through every way of splitting it; whole groups
    # may still be given back, so that "+44 20 7946 0958 11:41" ends before " 11".
    forms = (
        (("+0",), _rx(r"(?<![\w+])\+[1-9](?:[ .-]?+\(\d{1,4}\)|[ .-]?+\d++){1,8}" + _PHONE_END), 8, 15),
        (("00",), _rx(r"(?<![\w+])(?<![A-Z0-9]{4}[ -])00[1-9]"
                      r"(?:[ .-]?+\(\d{1,4}\)|[ .-]?+\d++){1,8}" + _PHONE_END), 8, 15),
        (("000-000-0000", "000.000.0000", "000 000 0000", "(000)"),
         _rx(r"(?<![\w+(.-])(?:1[ .-])?(?:\([2-9]\d\d\)[ .-]?|[2-9]\d\d[ .-])[2-9]\d\d[ .-]\d{4}"
             + _PHONE_END), 10, 11),
        (("00 00", "00-00", "00/00", "(00"),
         _rx(r"(?<![\w+(./-])(?<![A-Z0-9]{4}[ -])(?:\(0\d{1,4}\)[ ]?|0\d{1,4}[ /-])"
             r"\d{2,}+(?:[ -]\d{2,}+)*(?![\w:-]|[./]\d)"), 9, 12),
    )
    keyword = _rx(r"(?i:\b(?:phone|telephone|tel|mobile|mob|cell|cellphone|fax|call|whatsapp|sms)\b)"
                  r"(?:[ \t]*(?i:me|us|at|on|is|no\.?|nr\.?|number|#|:|-)){0,3}[ \t:.#-]*"
                  r"(\+?\(?\d(?:[ ().-]{0,2}\d){6,14})" + _PHONE_END)

    def wanted(self, rows):
        return rows.count("0") >= 7

    def find(self, text, shape=None):
        shape = shape or shape_of(text)
        for hints, regex, low, high in self.forms:
            if any(hint in shape for hint in hints):
                yield from self._plausible(text, regex.finditer(text), low, high)
        if _PHONE_KEYWORDS(text.lower()):
            yield from self._plausible(text, self.keyword.finditer(text), 7, 15)

    def _plausible(self, text, found, low, high):
        for m in found:
            group = m.lastindex or 0
            value = m.group(group)
            number = value[2:] if value.startswith("00") else value
            if value.startswith("00") and not _PHONE_SEPARATOR.search(value):
                continue  # 0049301234567 is as likely an order number as a phone number
            if low <= len(_digits(number)) <= high and not _DATE_START.match(value):
                yield self._match(text, m.start(group), m.end(group))


# --- CREDIT_CARD -------------------------------------------------------------------------------

# python-stdnum has the Luhn check but no issuer table, and the brands' ranges move every few
# years. So the issuer check is the one ISO/IEC 7812 fixes for every card: a first digit (the
# major industry identifier) of 2-6, the card and banking industries. It turns away Luhn-valid
# numbers that are no payment card (1234..., 0000..., a SIM card's 89... ICCID).
_CARD_INDUSTRIES = frozenset("23456")
# Printed like a card: the groups inside 3-6 digits long (4-4-4-4, Amex 4-6-5, not 1-2-1); the
# first and last may be any length, as a date or a CVV may touch the card.
_CARD_PRINTING = _rx(r"\d+(?:[ -]\d{3,6})*(?:[ -]\d+)?")


def card_number_ok(digits):
    return 13 <= len(digits) <= 19 and digits[0] in _CARD_INDUSTRIES and luhn.is_valid(digits)


class CreditCardDetector(Detector):
    """13-19 digits, optionally in groups split by spaces or dashes, a card industry, Luhn-valid."""

    kind = "CREDIT_CARD"
    priority = 90
    # One kind of separator per candidate, so "2024-07-15 4242 4242 4242 4242" still yields the card.
    # Not right after a word that starts like an IBAN (country and check digits): the digits
    # of a mistyped IBAN ("DE89 3704 0044 0532 0130 01") are no card.
    pattern = _rx(r"(?<![\w.-])(?<!\b[A-Z]{2}\d\d[ -])\d(?:[\d ]{10,28}|[\d-]{10,28})\d(?![\w-]|[.,]\d)")
    group = _rx(r"\d+")

    def wanted(self, rows):
        return rows.count("0") >= 12

    def find(self, text, shape=None):
        for m in self.pattern.finditer(text):
            span = self._card_span(m.group())
            if span:
                yield self._match(text, m.start() + span[0], m.start() + span[1])

    def _card_span(self, candidate):
        """The longest run of digit groups that is a valid card, as (start, end) in `candidate`."""
        if not _CARD_PRINTING.fullmatch(candidate):
            return None
        groups = list(self.group.finditer(candidate))
        for size in range(len(groups), 0, -1):
            for i in range(len(groups) - size + 1):
                if card_number_ok("".join(g.group() for g in groups[i:i + size])):
                    return groups[i].start(), groups[i + size - 1].end()
        return None


# --- IBAN --------------------------------------------------------------------------------------

class IbanDetector(Detector):
    """Upper-case IBANs, compact or printed in groups of four, valid by python-stdnum's iban
    (SWIFT's registry: each country's length and BBAN format; mod-97; national checks)."""

    kind = "IBAN"
    priority = 90
    # At most 34 characters (ISO 13616), so printed: seven groups after the first and a part.
    pattern = _rx(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?:[A-Z0-9]{10,30}|(?: [A-Z0-9]{4}){1,7}(?: [A-Z0-9]{1,3})?)"
                  r"(?![A-Za-z0-9])")

    def wanted(self, rows):
        return rows.has(("AA00",), "shape")

    def find(self, text, shape=None):
        for m in self.pattern.finditer(text):
            end = self._iban_end(m.group())
            if end:
                yield self._match(text, m.start(), m.start() + end)

    @staticmethod
    def _iban_end(candidate):
        """Where the IBAN ends in `candidate`: a printed one may run on into an upper-case word
        ("BE71 0961 2345 6769 SENT"), so it is the longest run of whole groups that is valid.
        Each country has one length, so at most one run can be."""
        ends = [i for i, ch in enumerate(candidate) if ch == " "] + [len(candidate)]
        return next((end for end in reversed(ends) if stdnum_iban.is_valid(candidate[:end])), None)


# --- US_SSN ------------------------------------------------------------------------------------

_SSN_WORDS = ("ssn", "ss#", "social security")


class SsnDetector(Detector):
    """AAA-GG-SSSS anywhere; undashed or spaced only right after an SSN keyword. Valid by
    python-stdnum's us.ssn: never issued areas, groups and serials, and the advertised numbers."""

    kind = "US_SSN"
    priority = 70
    patterns = (_rx(r"(?<![\w-])\d{3}-\d{2}-\d{4}(?![\w-])"),
                _rx(r"(?i:\b(?:ssn|ss#|social security(?: number| no\.?| #)?))[ \t:#.-]*"
                    r"(\d{3}[ -]?\d{2}[ -]?\d{4})(?![\w-])"))

    def wanted(self, rows):
        return rows.has(("000-00-0000",), "shape") | ((rows.count("0") >= 9) & rows.has(_SSN_WORDS, "lower"))

    def valid(self, value, text, start):
        # The digits only: stdnum refuses "123 45 6789" and misses its list on "078-051120".
        return stdnum_ssn.is_valid(_digits(value))


# --- IP_ADDRESS --------------------------------------------------------------------------------

# Four dotted numbers right after a version word are a version, not an address.
_VERSION_WORD = _rx(r"(?i:\b(?:v|ver|version|release|build|firmware|rev|revision)\.?)[ \t:#]*$")


class Ipv4Detector(Detector):
    kind = "IP_ADDRESS"
    priority = 50
    patterns = (_rx(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?!\w|\.\d)"),)

    def wanted(self, rows):
        return rows.has(("0.0",), "shape") & (rows.count(".") >= 3)

    def valid(self, value, text, start):
        # ipaddress refuses 999.1.1.1 and leading zeros (01.02.03.04).
        return _parses(ipaddress.IPv4Address, value) and not _context_before(text, start, _VERSION_WORD, 16)


class Ipv6Detector(Detector):
    kind = "IP_ADDRESS"
    priority = 50
    patterns = (_rx(r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:(?<=:)\d{1,3}(?:\.\d{1,3}){3})?"
                    r"(?:%[\w-]+)?(?![\w:]|\.\w)"),)

    def wanted(self, rows):
        return rows.count(":") >= 2

    def valid(self, value, text, start):
        # "add::bed" parses, but a real address nearly always has a digit.
        return any(ch.isdigit() for ch in value) and _parses(ipaddress.IPv6Address, value)


def _parses(address_class, value):
    try:
        address_class(value)
    except ValueError:
        return False
    return True


# --- API_KEY and SECRET ------------------------------------------------------------------------

class ApiKeyDetector(Detector):
    """Credentials with a published, recognisable prefix."""

    kind = "API_KEY"
    priority = 80
    # (literals one of which the text must hold, regex); the literals spare the regexes.
    forms = tuple((hints, _rx(regex)) for hints, regex in (
        # AWS access key id
        (("AKIA", "ASIA"), r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"),
        # GitHub classic and fine-grained tokens
        (("ghp_", "gho_", "ghs_", "ghu_", "ghr_", "github_pat_"),
         r"\bgh[pousr]_[A-Za-z0-9]{36,255}\b|\bgithub_pat_\w{22,255}\b"),
        # Slack
        (("xox",), r"\bxox[baprs]-[A-Za-z0-9-]{10,250}"),
        # Stripe secret, restricted and live publishable keys
        (("_live_", "_test_"), r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,247}\b|\bpk_live_[A-Za-z0-9]{16,247}\b"),
        # Google API key
        (("AIza",), r"\bAIza[\w-]{35}(?![\w-])"),
        # OpenAI-style (also Anthropic's sk-ant-)
        (("sk-",), r"(?<![\w-])sk-(?:proj-|svcacct-|admin-|ant-)?[\w-]{20,}"),
        # JWT: base64url header and payload, both JSON objects, so both start with eyJ
        (("eyJ",), r"\beyJ[\w-]{5,}\.eyJ[\w-]{5,}\.[\w-]*"),
        # A PEM private key block, through its END line when the text has one.
        (("PRIVATE KEY",), r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----(?:[^-]|-(?!----))*+"
                           r"(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----)?"),
    ))
    hints = tuple(hint for hints, _ in forms for hint in hints)

    def wanted(self, rows):
        return rows.has(self.hints)

    def find(self, text, shape=None):
        for hints, regex in self.forms:
            if any(hint in text for hint in hints):
                for m in regex.finditer(text):
                    yield self._match(text, m.start(), m.end())


def shannon_entropy(value):
    """Bits per character of `value`'s own character distribution."""
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


_LETTER_NEXT_TO_DIGIT = ("a0", "0a", "A0", "0A")
_MIXED_CLASSES = ("aA",) + _LETTER_NEXT_TO_DIGIT


def _mixes_classes(token):
    """A lower-case letter before a capital, or a letter next to a digit: generated tokens do
    that all the time, prose rarely. Tested on the shape, so the row's pre-check is exact."""
    shape = shape_of(token)
    return any(pair in shape for pair in _MIXED_CLASSES)


_LOWER_RUN = _rx(r"[a-z]+")
_PATH_SEGMENT = _rx(r"[a-z]{3,}|\d+")


class HighEntropyDetector(Detector):
    """Random-looking tokens: 24+ chars, mixed case, high entropy, not made of words.

    Hex (a git sha, an md5) has one letter case only, so it never matches here;
    HexSecretDetector takes it when a secret keyword stands in front.
    """

    kind = "SECRET"
    priority = 30
    pattern = _rx(r"(?<![\w+/-])[\w+/-]{24,}+={0,2}(?![\w+/=-])")
    min_entropy = 4.0
    # Mean length of the lower-case runs: about 1.6 in random base64 (99th percentile 3.0 at
    # 32 chars), 3.3 and more in identifiers made of words ("MyVeryLongClassName").
    max_lower_run = 3.0

    def wanted(self, rows):
        return rows.has(_MIXED_CLASSES, "shape")

    def find(self, text, shape=None):
        for m in self.pattern.finditer(text):
            for start, end in self._secret_spans(m.group()):
                yield self._match(text, m.start() + start, m.start() + end)

    def _secret_spans(self, token):
        if self.looks_random(token):
            return [(0, len(token))]
        spans, offset = [], 0
        for segment in token.split("/") if "/" in token else ():
            if len(segment) >= 24 and self.looks_random(segment):
                spans.append((offset, offset + len(segment)))  # a secret inside a URL path
            offset += len(segment) + 1
        return spans

    def looks_random(self, token):
        core = token.rstrip("=")
        if core.islower() or core.isupper() or not _mixes_classes(core):
            return False
        if "/" in core and any(_PATH_SEGMENT.fullmatch(s) for s in core.split("/")):
            return False  # a path such as api/v2/Users/...: a plain word or number between slashes
        runs = _LOWER_RUN.findall(core)
        if sum(map(len, runs)) / max(len(runs), 1) >= self.max_lower_run:
            return False
        # 24 distinct characters carry only 4.58 bits each, so short tokens cannot reach
        # 4.0 reliably: the bar is log2(length) - 0.75 below 32 characters (3.83 at 24).
        return shannon_entropy(core) >= min(self.min_entropy, math.log2(len(core)) - 0.75)


_SECRET_KEYWORD = _rx(r"(?i:(?<![a-z])(?:api[_ -]?key|key|token|secret|passw(?:or)?d|pwd|bearer|auth|credential))")
_SECRET_WORDS = ("key", "token", "secret", "passw", "pwd", "bearer", "auth", "credential")


class HexSecretDetector(Detector):
    """32+ hex digits count as a secret only after a keyword such as key/token/secret/password."""

    kind = "SECRET"
    priority = 30
    patterns = (_rx(r"(?<![0-9A-Za-z])[0-9a-fA-F]{32,}(?![0-9A-Za-z])"),)

    def wanted(self, rows):
        return rows.has(_LETTER_NEXT_TO_DIGIT, "shape") & rows.has(_SECRET_WORDS, "lower")

    def valid(self, value, text, start):
        mixed = not value.isdigit() and not value.isalpha()
        return mixed and _context_before(text, start, _SECRET_KEYWORD, 30)


# --- PERSON ------------------------------------------------------------------------------------

# Latin letters with their accents (José, Zoë, Łukasz); Latin Extended-A (U+0100-017E)
# alternates cases, so it sits in both classes.
_UPPER = "A-ZÀ-ÖØ-ÞĀ-ž"
_LOWER = "a-zß-öø-ÿĀ-ž"
_NAME = rf"(?:[{_UPPER}]['’]|Ma?c)?[{_UPPER}][{_LOWER}]+(?:-[{_UPPER}][{_LOWER}]+)?\b"
_FULL_NAME = rf"(?:[{_UPPER}]\.[ \t]*)?{_NAME}(?:[ \t]+(?:[{_UPPER}]\.[ \t]*)?{_NAME}){{0,2}}"
_TITLE_WORDS = ("Mr", "Ms", "Mx", "Dr", "Prof", "Miss")


class TitledNameDetector(Detector):
    """The capitalised name after a title: Mr. Smith, Dr. Grace Hopper (not the title itself)."""

    kind = "PERSON"
    priority = 20
    patterns = (re.compile(rf"\b(?:Mrs?|Ms|Miss|Mx|Dr|Prof)\.?[ \t]+({_FULL_NAME})"),)

    def wanted(self, rows):
        return rows.has(_TITLE_WORDS)


class NameIsDetector(Detector):
    """The capitalised name after "my/his/her/their/your (full) name is"."""

    kind = "PERSON"
    priority = 20
    patterns = (re.compile(r"(?i:\b(?:my|his|her|their|your)[ \t]+(?:full[ \t]+)?name(?:[ \t]+is|'s|’s)[ \t]+)"
                           rf"({_FULL_NAME})"),)

    def wanted(self, rows):
        return rows.has(("name",), "lower")


# Census given names that in running text are far more often a word, a month, a place or a brand.
AMBIGUOUS_GIVEN = frozenset("""
    AI AN BEE BELL CARRY ELSE ERA FE HA HANG HUE IN JA JANUARY KA LE LES LONG LOVE LU MA MAC MAN
    MANY MERRY META MI MISS MY NA NOBLE NU OK PA ROB ROD ROYAL SEASON SEE SEPTEMBER SO SON SONG
    SOON STORMY SUN TA TU UN VALENTINE WILLOW WINDY YU
    ABBEY ACE ADAM AMBER APRIL ART AUGUST AUSTIN AUTUMN BAY BILL BILLY BLAKE BLANCHE BOB BONNIE
    BRANDY BROOK BUCK BUD BUNNY CAROL CAROLINA CASH CHANCE CHARITY CHASE CHERRY CHINA CHRISTIAN
    CHRISTMAS CLAY CLIFF COLE CORAL CRYSTAL DAISY DALE DALLAS DAWN DEAN DEE DELL DENVER DESIRE
    DIAMOND DOLLY DON DOT DREW DUSTY EARL EARNEST EASTER EBONY ERNEST EVE FAITH FERN FLORENCE
    FOREST FORREST FRANK GAY GEORGIA GLEN GOLDEN GRACE GRANT GUY HARMONY HEATH HEATHER HILL HOLLY
    HONEY HOPE HOUSTON HUNTER IRIS IVORY IVY JACK JADE JAN JASMINE JERSEY JEWEL JORDAN JOY JUNE
    JUNIOR KING KIT LANCE LANE LIBERTY LILY LOYAL LUCKY MAJOR MARCH MARK MARSHALL MASON MAX MAY
    MERCY MICKEY MILES MISTY MONDAY MONTANA NORMAN OCEAN OLIVE PAGE PARIS PAT PATIENCE PEARL PENNY
    PEPPER PIERCE POLLY PORTER RAY REED RICH RIVER ROBIN ROCK ROCKY ROSE ROSS ROY RUBY RUSTY SAGE
    SANDY SHELBY SHERMAN SKY SPENCER SPRING STAR STERLING STORM SUE SUMMER SUNDAY SUNNY SYDNEY
    TAYLOR TIGER TRINITY TROY TUESDAY VAN VICTORIA VIOLET VIRGINIA WALKER WALLACE WARD WARREN
    WASHINGTON WAYNE WILL WINTER WOOD YOUNG
""".split())

# Census surnames that are also the second word of place, company and thing names.
NOT_SURNAMES = frozenset("""
    ACADEMY AIRPORT AVENUE BANK BAR BAY BEACH BLVD BOULEVARD BRIDGE BUILDING CAMPUS CANYON CASTLE
    CENTER CENTRE CHAPEL CHURCH CITY CLINIC CLUB COLLEGE COMPANY CORNER CORP COUNTY COURT COVE
    CREEK DAM DAY DRIVE EAST FALLS FARM FARMS FIELD FOREST FORT FOUNDATION FREEWAY GALLERY
    GARDEN GARDENS GATE GROUP GROVE HALL HARBOR HARBOUR HAVEN HEIGHTS HIGHWAY HILL HILLS HOSPITAL
    HOTEL HOUSE INC INSTITUTE ISLAND ISLANDS LAKE LAKES LANE LIBRARY LODGE MALL MANOR MARKET
    MEADOW MEADOWS MEMORIAL MILL MILLS MOUNT MOUNTAIN MOUNTAINS MUSEUM NORTH PALACE PARK PARKWAY
    PASS PEAK PLACE PLAZA POINT POND PORT PRAIRIE RANCH RIDGE RIVER ROAD ROCK SCHOOL SHORE SOUTH
    SPRING SPRINGS SQUARE STADIUM STATE STATION STREET SUMMIT TAVERN TECH TEMPLE TERRACE
    THEATER THEATRE TOWER TOWERS TOWN TRAIL UNIVERSITY VALLEY VIEW VILLA VILLAGE WAY WELLS WEST
    WOODS
    JANUARY FEBRUARY MARCH APRIL MAY JUNE JULY AUGUST SEPTEMBER OCTOBER NOVEMBER DECEMBER
    MONDAY TUESDAY WEDNESDAY THURSDAY FRIDAY SATURDAY SUNDAY
""".split())


def _census_key(word):
    """The census spelling: "José" -> "JOSE"."""
    if word.isascii():
        return word.upper()
    return unicodedata.normalize("NFKD", word).encode("ascii", "ignore").decode().upper()


def _read_census(path):
    with open(path, encoding="ascii") as lines:
        return {line.split(None, 1)[0] for line in lines if line.strip()}


@lru_cache(maxsize=1)
def census_names():
    """(given names, surnames), upper case, from the 1990 US Census lists (public domain).

    The lists ship in the `names` package (MIT). It is imported on first use so that
    importing this module stays cheap for code that never scans.
    """
    import names

    given = _read_census(names.FILES["first:male"]) | _read_census(names.FILES["first:female"])
    surnames = _read_census(names.FILES["last"])
    return frozenset(given - AMBIGUOUS_GIVEN), frozenset(surnames - NOT_SURNAMES)


# A lower-case letter, a space, then a capital: the end of one word and a capitalised next one.
_CAPITALISED_PAIRS = ("a Aa", "a A.", "a A'", "a A’")


class GivenNameDetector(Detector):
    """A census given name, an optional middle initial, then a census surname: "Grace M. Hopper"."""

    kind = "PERSON"
    priority = 20
    # The surname sits in a lookahead so that "Yesterday Mary Smith" still tries "Mary".
    pattern = re.compile(rf"\b([{_UPPER}][{_LOWER}]+)(?=(?: [{_UPPER}]\.)? ({_NAME}))")

    def wanted(self, rows):
        return rows.has(_CAPITALISED_PAIRS, "shape") | rows.non_ascii()

    def find(self, text, shape=None):
        given, surnames = census_names()
        spans = []
        for m in self.pattern.finditer(text):
            if _census_key(m.group(1)) in given and self._surname(m.group(2), surnames):
                spans.append([m.start(1), m.end(2)])
        return [self._match(text, start, end) for start, end in _merge_touching(spans)]

    @staticmethod
    def _surname(token, surnames):
        parts = _census_key(token.replace("'", "").replace("’", "")).split("-")
        return any(part in surnames for part in parts)


def _merge_touching(spans):
    """Join "Mary Ann" and "Ann Smith" into "Mary Ann Smith"."""
    merged = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


# --- scanning ----------------------------------------------------------------------------------

DETECTORS = [
    EmailDetector(), PhoneDetector(), CreditCardDetector(), IbanDetector(), SsnDetector(),
    Ipv4Detector(), Ipv6Detector(), ApiKeyDetector(), HighEntropyDetector(), HexSecretDetector(),
    TitledNameDetector(), NameIsDetector(), GivenNameDetector(),
]


class Scanner:
    """Runs `detectors` on texts, each only where its cheap `wanted` pre-check passes."""

    def __init__(self, detectors):
        self.detectors = tuple(detectors)
        self.priority = {d.kind: d.priority for d in self.detectors}

    def scan(self, text):
        shape = text.translate(_SHAPE)
        rows = _Text(text, shape)
        return self._found(text, shape, [d for d in self.detectors if d.wanted(rows)])

    def scan_many(self, texts):
        """scan() for each text, the pre-checks run once over the whole batch: numpy or
        str.find passes per detector over all the texts joined, instead of thirteen Python
        calls per text. The result is the same as scan()'s, text by text (a test checks)."""
        if len(texts) < _BATCH_MIN:
            return [self.scan(text) for text in texts]
        batch = _Batch(texts)
        masks = np.zeros(len(texts), dtype=np.int64)
        for bit, detector in enumerate(self.detectors):
            masks |= np.asarray(detector.wanted(batch), dtype=np.int64) << bit
        chosen, found_per_text = {}, []
        for text, mask in zip(texts, masks.tolist()):
            if mask not in chosen:
                chosen[mask] = [d for bit, d in enumerate(self.detectors) if mask >> bit & 1]
            found_per_text.append(self._found(text, None, chosen[mask]) if mask else [])
        return found_per_text

    def _found(self, text, shape, detectors):
        found = []
        for detector in detectors:
            found.extend(detector.find(text, shape))
        return resolve_overlaps(found, self.priority) if len(found) > 1 else found


# Below this many texts, scan_many checks text by text: the batch's set-up would cost more.
_BATCH_MIN = 32


class _Text:
    """One text, asked what a pre-check asks of a _Batch, with plain str methods."""

    __slots__ = ("text", "shape", "lower")

    def __init__(self, text, shape):
        self.text, self.shape, self.lower = text, shape, text.lower()

    def has(self, literals, where="text"):
        """Whether the text (its shape, its lower case) holds any of `literals`."""
        haystack = getattr(self, where)
        for literal in literals:  # a loop, not any(): a generator would cost more than the tests
            if literal in haystack:
                return True
        return False

    def count(self, char):
        return self.shape.count(char)

    def non_ascii(self):
        return not self.text.isascii()


class _Batch:
    """Texts joined by NUL into one string (with its shape), and where each text starts, for
    pre-checks over all of them at once. A literal without NUL cannot match across two texts,
    so a match's position says which text holds it."""

    def __init__(self, texts):
        self.texts = texts
        self.text, self.starts = _joined(texts)
        self.shape = self.text.translate(_SHAPE)
        # The shape as code points, for numpy: it is mostly "a", "A", "0" and punctuation.
        self._points = np.frombuffer(self.shape.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        self._lower, self._counts, self._is = None, {}, {}

    def has(self, literals, where="text"):
        """Which texts hold any of `literals` (in the text, its shape or its lower case)."""
        if where == "shape":
            # In a shape nearly every character is "a": a substring search would stop at each
            # of them, comparing whole code point arrays does not.
            return self._per_text(np.concatenate([self._shape_positions(literal) for literal in literals])) > 0
        if where == "lower" and self._lower is None:
            # Each text lowered on its own: a few characters lengthen in lower case ("İ" becomes
            # two), so the positions in the lower case of the joined text would shift.
            self._lower = _joined([text.lower() for text in self.texts])
        haystack, starts = self._lower if where == "lower" else (self.text, self.starts)
        positions = [at for literal in literals for at in _find_all(haystack, literal)]
        return self._per_text(np.asarray(positions, dtype=np.int64), starts) > 0

    def count(self, char):
        """How often `char` occurs in each text's shape."""
        if char not in self._counts:
            self._counts[char] = self._per_text(np.flatnonzero(self._is_point(char)))
        return self._counts[char]

    def non_ascii(self):
        return self._per_text(np.flatnonzero(self._points > 127)) > 0  # the shape keeps non-ASCII as is

    def _per_text(self, positions, starts=None):
        """How many of `positions` (in the joined text, or in `starts`' joined text) each text holds."""
        texts = np.searchsorted(self.starts if starts is None else starts, positions, side="right") - 1
        return np.bincount(texts, minlength=len(self.texts))

    def _shape_positions(self, literal):
        span = len(self._points) - len(literal) + 1
        if span <= 0:
            return np.zeros(0, np.int64)
        match = self._is_point(literal[0])[:span].copy()
        for offset, char in enumerate(literal[1:], 1):
            match &= self._is_point(char)[offset:offset + span]
        return np.flatnonzero(match)

    def _is_point(self, char):
        if char not in self._is:
            self._is[char] = self._points == ord(char)
        return self._is[char]


def _joined(texts):
    """`texts` joined by NUL, and where each of them starts in the result."""
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    return "\0".join(texts), np.cumsum(lengths + 1) - lengths - 1


def _find_all(haystack, literal):
    """Every start of `literal` in `haystack`: str.find's fast search, not a regex's."""
    at = haystack.find(literal)
    while at >= 0:
        yield at
        at = haystack.find(literal, at + 1)


@lru_cache(maxsize=8)
def _scanner(detectors):
    return Scanner(detectors)


def scan(text, detectors=None):
    """Non-overlapping matches in `text`, sorted by start (DETECTORS unless told otherwise)."""
    return _scanner(tuple(DETECTORS if detectors is None else detectors)).scan(text)


def scan_many(texts, detectors=None):
    """scan() for each text, with the cheap pre-checks run over the whole batch at once."""
    return _scanner(tuple(DETECTORS if detectors is None else detectors)).scan_many(list(texts))


def resolve_overlaps(matches, priority=None):
    """Keep the longest of overlapping matches (the more specific kind on a tie), sorted by start."""
    priority = priority or {d.kind: d.priority for d in DETECTORS}
    ranked = sorted(set(matches), key=lambda m: (m.start - m.end, -priority.get(m.kind, 0), m.start))
    kept = []
    for m in ranked:
        if all(m.end <= k.start or m.start >= k.end for k in kept):
            kept.append(m)
    return sorted(kept, key=lambda m: m.start)


def redact(text, matches=None):
    """`text` with every match replaced by its typed placeholder, such as <EMAIL>."""
    if matches is None:
        matches = scan(text)
    parts, position = [], 0
    for m in sorted(matches, key=lambda m: m.start):
        if m.start < position:
            continue  # overlaps a match already replaced
        parts += [text[position:m.start], f"<{m.kind}>"]
        position = m.end
    parts.append(text[position:])
    return "".join(parts)


# --- masking -----------------------------------------------------------------------------------

def _star_all_but(value, keep_start=0, keep_end=0):
    """Letters and digits become '*' except the first/last few; separators keep the shape."""
    positions = [i for i, ch in enumerate(value) if ch.isalnum()]
    visible = set(positions[:keep_start]) | set(positions[len(positions) - keep_end:] if keep_end else ())
    return "".join(ch if i in visible or not ch.isalnum() else "*" for i, ch in enumerate(value))


def _in_fours(value):
    return " ".join(value[i:i + 4] for i in range(0, len(value), 4))


def _mask_email(value):
    local, _, domain = value.rpartition("@")
    host, _, tld = domain.rpartition(".")
    return f"{local[:1]}***@{host[:1]}***.{tld}"


_KNOWN_PREFIX = _rx(r"-----BEGIN [A-Z0-9 ]+-----|(?:AKIA|ASIA|AIza|eyJ|github_pat_|gh[pousr]_|xox[baprs]-"
                    r"|[spr]k_(?:live|test)_|sk-(?:proj-|svcacct-|admin-|ant-)?)")


def _mask_token(value):
    prefix = _KNOWN_PREFIX.match(value)
    shown = prefix.group() if prefix else value[:2]
    return f"{shown}{'*' * min(len(value) - len(shown), 12)} ({len(value)} chars)"


_MASKS = {
    "EMAIL": _mask_email,
    "PHONE": lambda value: _star_all_but(value, keep_end=2),
    "CREDIT_CARD": lambda value: _star_all_but(_in_fours(value) if value.isdigit() else value, keep_end=4),
    "IBAN": lambda value: _star_all_but(value if " " in value else _in_fours(value), keep_start=2, keep_end=4),
    "US_SSN": lambda value: _star_all_but(value, keep_end=4),
    "IP_ADDRESS": lambda value: (value.split(":", 1)[0] + ":****:****" if ":" in value
                                 else value.split(".", 1)[0] + ".***.***.***"),
    "API_KEY": _mask_token,
    "SECRET": _mask_token,
    "PERSON": lambda value: " ".join(word[:1] + "*" * (len(word) - 1) for word in value.split()),
}


def mask(match):
    """A report-safe rendering of a match: its shape and a few characters, never the whole value."""
    masker = _MASKS.get(match.kind)
    return masker(match.value) if masker else f"<{match.kind}>"


# --- report ------------------------------------------------------------------------------------

class PiiReport:
    """Counts per kind, rows with any PII, and a few masked examples per kind, batch by batch.

    Call add() for every scanned row, clean ones too, so that rows_scanned is right.
    """

    def __init__(self, max_examples=5):
        self.max_examples = max_examples
        self.rows_scanned = 0
        self.rows_with_pii = 0
        self.counts = {}
        self.examples = {}  # kind -> [{"row": index, "masked": text}], lowest row indexes first

    def add(self, row_index, matches):
        self.rows_scanned += 1
        if not matches:
            return
        self.rows_with_pii += 1
        for m in matches:
            self.counts[m.kind] = self.counts.get(m.kind, 0) + 1
            kept = self.examples.setdefault(m.kind, [])
            if len(kept) < self.max_examples:
                kept.append({"row": row_index, "masked": mask(m)})

    def add_rows(self, start, count, found):
        """`count` scanned rows from row index `start`; `found` holds (offset, matches) for
        those with PII only, so that clean rows cost nothing each."""
        self.rows_scanned += count - len(found)
        for offset, matches in found:
            self.add(start + offset, matches)

    def merge(self, other):
        """Fold `other` in; examples keep the lowest row indexes, whatever the merge order."""
        self.rows_scanned += other.rows_scanned
        self.rows_with_pii += other.rows_with_pii
        for kind, count in other.counts.items():
            self.counts[kind] = self.counts.get(kind, 0) + count
        for kind, examples in other.examples.items():
            combined = sorted(self.examples.get(kind, []) + examples, key=lambda e: e["row"])
            self.examples[kind] = combined[:self.max_examples]
        return self

    def to_dict(self):
        return {
            "rows_scanned": self.rows_scanned,
            "rows_with_pii": self.rows_with_pii,
            "counts": dict(sorted(self.counts.items())),
            "examples": {kind: [dict(e) for e in self.examples[kind]] for kind in sorted(self.examples)},
            "max_examples": self.max_examples,
        }

    @classmethod
    def from_dict(cls, data):
        report = cls(max_examples=data.get("max_examples", 5))
        report.rows_scanned = data.get("rows_scanned", 0)
        report.rows_with_pii = data.get("rows_with_pii", 0)
        report.counts = dict(data.get("counts", {}))
        report.examples = {kind: [dict(e) for e in items] for kind, items in data.get("examples", {}).items()}
        return report
