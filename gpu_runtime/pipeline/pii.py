"""Structured personal data in the forget corpus: typed detection and format-preserving replacements.

Detection (``detect``) finds e-mails, URLs, IBANs, card numbers (Luhn), account numbers, dates,
phone numbers, handles (``@user`` and usernames stated as such) and street addresses, as
non-overlapping character spans with a kind. Each becomes an anchor of that kind (source
"pattern"), and ``Replacer`` gives it generic translations of the same type and format: a card
keeps its length, grouping and a valid Luhn digit, an IBAN its country, length and a valid
checksum, a date its format, a phone its shape, an e-mail its ``user@domain.tld`` shape.

Why not presidio-analyzer: its pattern recognizers work offline, but installing it pulls in spaCy
(and thinc, blis, ...: about twenty packages) for five regular expressions and two checksums; its
URL recognizer calls ``tldextract``, which tries to download the public suffix list (no network
here), and matches inside e-mail addresses. The maintained pieces that do the real work are used
directly instead: ``phonenumbers`` (the libphonenumber metadata) for phones, ``python-stdnum`` for
the Luhn and IBAN (ISO 13616, mod 97) checks, ``faker`` for the generic values. Nothing here
downloads anything at run time.

Replacements are seeded per request (``request_seed``: the request's seed plus a hash of its
corpus), so the same request always gets the same replacements; within a request the same
original always maps to the same replacement, and no replacement equals any original.
"""

from __future__ import annotations

import calendar
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from .types import AnchorKind

if TYPE_CHECKING:
    from faker import Faker

#: Anchor kinds this module detects and replaces (their inner tokens are labelled as a whole).
TYPED_KINDS: frozenset[str] = frozenset(
    {"email", "phone", "card", "account", "iban", "date", "url", "handle", "address"}
)
PHONE_REGIONS: tuple[str, ...] = ("US", "GB")


@dataclass(frozen=True)
class Detection:
    """One typed span of a text: characters [start, end)."""

    kind: AnchorKind
    start: int
    end: int
    text: str


# ---------------------------------------------------------------- patterns

_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}\b"
)
_TLDS = "com|org|net|edu|gov|io|co|uk|de|fr|info|biz|me|app|dev|ai|us|ca|au|kr|jp|nl|eu|ly|tv|xyz"
_URL = re.compile(
    r"(?<![\w@.])(?:https?://[^\s<>\"'()]+"
    r"|www\.[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+(?:/[^\s<>\"'()]*)?"
    r"|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.(?:" + _TLDS + r")/[^\s<>\"'()]*)"
)
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
_DIGIT_RUN = re.compile(r"(?<![\w.-])\d(?:[ -]?\d){5,22}(?![\w-])")
_ACCOUNT_CTX = re.compile(
    r"\b(?:account|acct|a/c|policy|membership|member|customer|client|passport|licen[cs]e|routing|"
    r"sort code|social security|ssn|national insurance|tax|patient|student|employee)\b"
    r"(?:\s+(?:number|no\.?|num|id|code))?\s*(?:is|was|:|#|=)?\s*(?:#\s*)?",
    re.I,
)
_ACCOUNT_VALUE = re.compile(r"[A-Z]{0,4}\d[\d -]{3,22}\d(?![\w-])|[A-Z]{1,4}-?\d{4,}(?![\w-])")
_PHONE_CTX = re.compile(
    r"\b(?:phone|telephone|tel|mobile|cell|fax|call(?:ed)?|reach(?:ed)?|dial(?:led)?|text|whatsapp)\b"
    r"(?:\s+(?:her|him|them|me|us))?(?:\s+(?:number|no\.?|on|at))?\s*(?:is|was|:|=)?\s*",
    re.I,
)
# The North American shape ("(634) 832-8098", "001-634-832-8098x123"), valid area code or not.
_NANP = re.compile(
    r"(?<![\w+-])(?:\+?1[-. ]?|001-)?(?:\(\d{3}\) ?|\d{3}[-. ])\d{3}[-. ]\d{4}(?:\s?(?:x|ext\.?)\s?\d{1,5})?(?![\w-])"
)
_PHONE_VALUE = re.compile(r"\+?\(?\d[\d ().-]{5,18}\d")
_HANDLE = re.compile(r"(?<![\w@./])@[A-Za-z0-9_](?:[A-Za-z0-9_.]{0,28}[A-Za-z0-9_])?(?![\w@])")
_USERNAME_CTX = re.compile(
    r"\b(?:user ?name|username|login|screen ?name|gamertag|nickname|handle|user id|alias|account name)"
    r"(?:\s+(?:is|was|of|on \w+ is))?\s*[:=]?\s*[\"'“‘]?",
    re.I,
)
_USERNAME_VALUE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{1,30}[A-Za-z0-9_]")
_ABBREVIATIONS = {"St", "Rd", "Ave", "Ln", "Blvd", "Dr", "Ct", "Pl", "Sq", "Pkwy", "Hwy", "Cir", "Apt"}
_STREET_TYPES = (
    "Street|St|Road|Rd|Avenue|Ave|Lane|Ln|Boulevard|Blvd|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|"
    "Close|Crescent|Square|Sq|Parkway|Pkwy|Highway|Hwy|Row|Mews|Gardens|Circle|Cir|Trail|Alley"
)


@cache
def _street_types() -> str:
    """Street types: common abbreviations plus the USPS suffixes Faker ships ("Cove", "Ports")."""
    from faker.providers.address.en_US import Provider

    words = set(_STREET_TYPES.split("|")) | set(Provider.street_suffixes)
    return "|".join(sorted(words, key=lambda w: (-len(w), w)))


@cache
def _address_re() -> re.Pattern[str]:
    return re.compile(
        r"\b\d{1,5}[A-Za-z]?,? (?:[A-Z][\w'’-]*\.? ){1,4}(?:" + _street_types() + r")\b\.?"
        r"(?:,? (?:Apt|Apartment|Unit|Suite|Flat|#)\.? ?[\w-]{1,6}\b)?"
        r"|\b[A-ZÄÖÜ][a-zäöüß]+(?:straße|strasse|gasse|weg|platz|allee) \d{1,4}[a-z]?\b"
    )


_MONTHS = [calendar.month_name[i] for i in range(1, 13)]
_MONTHS_ABBR = [calendar.month_abbr[i] for i in range(1, 13)]
_MONTH_RE = r"(?:" + "|".join(_MONTHS + [m for m in _MONTHS_ABBR if m != "May"]) + r")\.?"
_DATE_PATTERNS = [
    # 1987-03-12, 1987/03/12
    re.compile(r"\b(?P<y>\d{4})(?P<s1>[-/.])(?P<m>\d{1,2})(?P=s1)(?P<d>\d{1,2})\b"),
    # 03/12/1987, 12.03.1987, 12-03-87
    re.compile(r"\b(?P<a>\d{1,2})(?P<s1>[-/.])(?P<b>\d{1,2})(?P=s1)(?P<y>\d{4}|\d{2})\b"),
    # 12 March 1987, 12th of March, 1987
    re.compile(
        r"\b(?P<d>\d{1,2})(?P<ord>st|nd|rd|th)?(?P<of> of)? (?P<mn>" + _MONTH_RE + r"),? (?P<y>\d{4})\b", re.I
    ),
    # March 12, 1987; March 12th 1987
    re.compile(r"\b(?P<mn>" + _MONTH_RE + r") (?P<d>\d{1,2})(?P<ord>st|nd|rd|th)?,? (?P<y>\d{4})\b", re.I),
]
_STOP_VALUES = {
    "the", "a", "an", "is", "was", "his", "her", "their", "and", "or", "of", "on", "in", "at", "to",
    "for", "with", "same", "also", "still", "that", "this", "not", "none", "unknown",
}  # fmt: skip


def _overlaps(spans: Iterable[tuple[int, int]], s: int, e: int) -> bool:
    return any(s < b and a < e for a, b in spans)


def _digits(s: str) -> str:
    return "".join(ch for ch in s if ch.isdigit())


def _luhn_ok(digits: str) -> bool:
    from stdnum import luhn

    return 12 <= len(digits) <= 19 and luhn.is_valid(digits)


def _iban_ok(value: str) -> bool:
    from stdnum import iban

    return bool(iban.is_valid(value))


def _valid_date(y: int, m: int, d: int) -> bool:
    return 1 <= m <= 12 and 1 <= d <= calendar.monthrange(y if y > 0 else 2000, m)[1]


def _date_fields(match: re.Match[str]) -> tuple[int, int, int] | None:
    """(year, month, day) of a date match, or None if it is no date."""
    gd = match.groupdict()
    y = int(gd["y"])
    if "mn" in gd and gd.get("mn"):
        name = gd["mn"].rstrip(".").lower()
        m = next(i + 1 for i in range(12) if _MONTHS[i].lower().startswith(name[:3]))
        d = int(gd["d"])
    elif "a" in gd and gd.get("a"):
        a, b = int(gd["a"]), int(gd["b"])
        # Day/month order is ambiguous: take whichever reading is a date.
        m, d = (a, b) if _valid_date(2000, a, b) else (b, a)
    else:
        m, d = int(gd["m"]), int(gd["d"])
    if len(gd["y"]) == 4 and not 1000 <= y <= 2999:
        return None
    return (y, m, d) if _valid_date(y if len(gd["y"]) == 4 else 2000, m, d) else None


def _phones(text: str, regions: Sequence[str]) -> list[tuple[int, int]]:
    import phonenumbers

    found: list[tuple[int, int]] = []
    for region in regions:
        for m in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
            if not _overlaps(found, m.start, m.end):
                found.append((m.start, m.end))
    return found


def detect(text: str, *, regions: Sequence[str] = PHONE_REGIONS) -> list[Detection]:
    """Typed spans of ``text``, sorted, non-overlapping (earlier kinds below win a conflict)."""
    spans: list[tuple[int, int, AnchorKind]] = []

    def add(s: int, e: int, kind: AnchorKind) -> None:
        # Trailing sentence punctuation is not part of a value.
        while e > s and text[e - 1] in ".,;:!?)'\"":
            if kind == "address" and text[e - 1] == "." and text[s : e - 1].split()[-1] in _ABBREVIATIONS:
                break  # "Ave." keeps its abbreviation dot; "Cape." loses the full stop
            e -= 1
        if e > s and not _overlaps([(a, b) for a, b, _k in spans], s, e):
            spans.append((s, e, kind))

    for m in _EMAIL.finditer(text):
        add(m.start(), m.end(), "email")
    for m in _URL.finditer(text):
        add(m.start(), m.end(), "url")
    for m in _IBAN.finditer(text):
        if _iban_ok(m.group()):
            add(m.start(), m.end(), "iban")
    for m in _NANP.finditer(text):
        add(m.start(), m.end(), "phone")
    for m in _DIGIT_RUN.finditer(text):
        if _luhn_ok(_digits(m.group())):
            add(m.start(), m.end(), "card")
    for ctx in _ACCOUNT_CTX.finditer(text):
        v = _ACCOUNT_VALUE.match(text, ctx.end())
        if v and len(_digits(v.group())) >= 4:
            add(v.start(), v.end(), "account")
    for pat in _DATE_PATTERNS:
        for m in pat.finditer(text):
            if _date_fields(m) is not None:
                add(m.start(), m.end(), "date")
    for s, e in _phones(text, regions):
        add(s, e, "phone")
    for ctx in _PHONE_CTX.finditer(text):
        v = _PHONE_VALUE.match(text, ctx.end())
        if v and 7 <= len(_digits(v.group())) <= 15:
            add(v.start(), v.end(), "phone")
    for m in _HANDLE.finditer(text):
        add(m.start(), m.end(), "handle")
    for ctx in _USERNAME_CTX.finditer(text):
        v = _USERNAME_VALUE.match(text, ctx.end())
        if v and v.group().lower() not in _STOP_VALUES:
            add(v.start(), v.end(), "handle")
    for m in _address_re().finditer(text):
        add(m.start(), m.end(), "address")
    # Left-over long numbers (six digits or more) are account-like identifiers.
    for m in _DIGIT_RUN.finditer(text):
        # A range ("100-200", "1987 1990") is no identifier.
        if len(_digits(m.group())) >= 6 and not re.fullmatch(r"\d{1,4}[ -]\d{1,4}", m.group()):
            add(m.start(), m.end(), "account")
    return [Detection(k, s, e, text[s:e]) for s, e, k in sorted(spans)]


# ---------------------------------------------------------------- replacements


def _stable(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "big")


def request_seed(seed: int, corpus: Sequence[str]) -> int:
    """The replacements' seed for one request: its options.seed plus a hash of its corpus."""
    return _stable("pii", seed, hashlib.sha256("\x1e".join(corpus).encode()).hexdigest())


def _shape(fk: Faker, original: str, keep_first: bool = False) -> str:
    """Same characters classes in the same places: digits, letters (same case), separators kept."""
    out = []
    for j, ch in enumerate(original):
        if keep_first and j == 0:
            out.append(ch)
        elif ch.isdigit():
            out.append(str(fk.random.randrange(1 if j == 0 and ch != "0" else 0, 10)))
        elif ch.isalpha() and ch.isascii():
            c = fk.random.choice("ABCDEFGHJKLMNPRSTUVWXYZ")
            out.append(c if ch.isupper() else c.lower())
        else:
            out.append(ch)
    return "".join(out)


def _regroup(template: str, chars: str) -> str:
    """Put ``chars`` into the alphanumeric slots of ``template`` (keeps its spaces and dashes)."""
    it = iter(chars)
    return "".join(next(it) if ch.isalnum() else ch for ch in template)


def _card(fk: Faker, original: str) -> str:
    from stdnum import luhn

    digits = _digits(original)
    body = digits[0] + "".join(str(fk.random.randrange(10)) for _ in range(len(digits) - 2))
    return _regroup(original, body + luhn.calc_check_digit(body))


def _iban(fk: Faker, original: str) -> str:
    from stdnum import iban

    compact = iban.compact(original)
    for _ in range(50):
        bban = _shape(fk, compact[4:])
        cand = compact[:2] + iban.calc_check_digits(compact[:2] + "00" + bban) + bban
        if _iban_ok(cand):
            return _regroup(original, cand)
    # A country whose national check the random BBAN keeps failing: the ISO checksum still holds.
    return _regroup(original, cand)


def _phone(fk: Faker, original: str) -> str:
    import phonenumbers

    keep = 0
    if original.startswith("+"):
        try:
            cc = str(phonenumbers.parse(original, None).country_code)
            keep = original.index(cc) + len(cc)
        except (phonenumbers.NumberParseException, ValueError):
            keep = 1
    region = None
    for r in PHONE_REGIONS:
        try:
            if phonenumbers.is_valid_number(phonenumbers.parse(original, r)):
                region = r
                break
        except phonenumbers.NumberParseException:
            continue
    # A national trunk prefix ("0" in the UK, "1" in the US) is part of the shape, not of the number.
    body = original[keep:]
    first = next((i for i, ch in enumerate(body) if ch.isdigit()), len(body))
    if body[first : first + 1] in ("0", "1"):
        keep += first + 1
    cand = original
    for _ in range(50):
        cand = original[:keep] + _shape(fk, original[keep:])
        if region is None:
            return cand
        try:
            if phonenumbers.is_valid_number(phonenumbers.parse(cand, region)):
                return cand
        except phonenumbers.NumberParseException:
            pass
    return cand


def _email(fk: Faker, original: str) -> str:
    user, _, domain = original.partition("@")
    labels = domain.split(".")
    if "." in user:
        new_user = f"{fk.first_name()}.{fk.last_name()}".lower()
    elif "_" in user:
        new_user = f"{fk.first_name()}_{fk.last_name()}".lower()
    else:
        new_user = fk.user_name().replace(".", "").replace("_", "")
    if any(ch.isdigit() for ch in user) and not any(ch.isdigit() for ch in new_user):
        new_user += str(fk.random.randrange(10, 100))
    # The top-level domain is generic: keep it, and the number of labels.
    hosts = [fk.domain_word() for _ in labels[:-1]]
    return f"{new_user}@{'.'.join([*hosts, labels[-1]])}"


def _url(fk: Faker, original: str) -> str:
    m = re.match(r"(https?://)?(www\.)?([^/?#]+)(.*)", original)
    assert m is not None  # the pattern matches any string
    scheme, www, host, rest = m.group(1) or "", m.group(2) or "", m.group(3), m.group(4)
    labels = host.split(".")
    new_host = ".".join([*(fk.domain_word() for _ in labels[:-1]), labels[-1]])
    new_rest = re.sub(r"[A-Za-z]+", lambda w: fk.word().lower() if w.group().islower() else fk.word(), rest)
    new_rest = re.sub(r"\d", lambda _d: str(fk.random.randrange(10)), new_rest)
    return f"{scheme}{www}{new_host}{new_rest}"


def _handle(fk: Faker, original: str) -> str:
    at = "@" if original.startswith("@") else ""
    name = original[len(at) :]
    user = fk.user_name()
    if not any(ch in name for ch in "._"):
        user = user.replace(".", "").replace("_", "")
    if any(ch.isdigit() for ch in name) and not any(ch.isdigit() for ch in user):
        user += str(fk.random.randrange(1, 100))
    if name[:1].isupper():
        user = user[:1].upper() + user[1:]
    return at + user


def _address(fk: Faker, original: str) -> str:
    german = re.match(r"([A-ZÄÖÜ][a-zäöüß]+)(straße|strasse|gasse|weg|platz|allee)( .*)", original)
    if german:
        return fk.last_name() + german.group(2) + _shape(fk, german.group(3))
    generic = re.compile(r"(?:" + _STREET_TYPES + r"|Apt|Apartment|Unit|Suite|Flat)\.?,?")
    out = []
    for word in re.split(r"( +)", original):
        if any(ch.isdigit() for ch in word):
            out.append(_shape(fk, word))  # house number: same digits count, letter suffix kept as a letter
        elif not word.strip() or generic.fullmatch(word) or not word[:1].isupper():
            out.append(word)  # spaces and the street type are generic
        else:
            out.append(fk.last_name() + ("," if word.endswith(",") else ""))
    return "".join(out)


def _date(fk: Faker, original: str) -> str:
    for pat in _DATE_PATTERNS:
        m = pat.fullmatch(original)
        if m is None:
            continue
        fields = _date_fields(m)
        if fields is None:
            continue
        y = fields[0]
        gd = m.groupdict()
        named = bool(gd.get("mn"))
        two_digit_year = len(gd["y"]) == 2
        year = y if two_digit_year else max(1000, min(2999, y + fk.random.randint(-12, 12)))
        month = fk.random.randint(1, 12)
        day = fk.random.randint(1, calendar.monthrange(year if not two_digit_year else 2000, month)[1])
        if gd.get("a") is not None:
            # Keep the ambiguous day/month order readable either way.
            day = min(day, 12) if int(gd["a"]) <= 12 and int(gd["b"]) <= 12 else day
        if two_digit_year:
            year = (y + fk.random.randint(1, 20)) % 100

        def num(old: str, new: int, named: bool = named) -> str:
            # Numeric formats keep their width ("03" -> "11", "12" -> "04"); named ones pad only if padded.
            return str(new).zfill(len(old) if not named or old.startswith("0") else 1)

        repl: dict[str, str] = {}
        if gd.get("mn"):
            old = gd["mn"]
            name = _MONTHS[month - 1] if len(old.rstrip(".")) > 3 or old.rstrip(".") == "May" else None
            if name is None:
                name = _MONTHS_ABBR[month - 1] if month != 5 else "May"
            name = name.upper() if old.isupper() else name.lower() if old.islower() else name
            repl["mn"] = name + ("." if old.endswith(".") and not name.endswith(".") else "")
            repl["d"] = num(gd["d"], day)
            if gd.get("ord"):
                repl["ord"] = "th" if 11 <= day <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
        elif gd.get("a") is not None:
            day_first = not (_valid_date(2000, int(gd["a"]), int(gd["b"])))
            first, second = (day, month) if day_first else (month, day)
            repl["a"] = num(gd["a"], first)
            repl["b"] = num(gd["b"], second)
        else:
            repl["m"] = num(gd["m"], month)
            repl["d"] = num(gd["d"], day)
        repl["y"] = str(year).zfill(len(gd["y"]))
        out, last = [], 0
        spans = sorted((m.span(k), v) for k, v in repl.items())
        for (s, e), v in spans:
            out.append(original[last:s])
            out.append(v)
            last = e
        out.append(original[last:])
        return "".join(out)
    return _shape(fk, original)


def _number(fk: Faker, original: str) -> str:
    """A plain number stated as a fact: a year stays a plausible year, anything else keeps its shape."""
    if re.fullmatch(r"1[5-9]\d\d|20\d\d", original):
        year = int(original)
        return str(year + fk.random.choice([-1, 1]) * fk.random.randint(1, 15))
    return _shape(fk, original)


_MAKERS = {
    "number": _number,
    "card": _card,
    "iban": _iban,
    "phone": _phone,
    "email": _email,
    "url": _url,
    "handle": _handle,
    "address": _address,
    "date": _date,
    "account": lambda fk, original: _shape(fk, original),
}


class Replacer:
    """Generic replacements of the same type and format, consistent within one request.

    ``avoid``: every original of the request (no replacement equals one of them). The replacement
    for an original depends only on the request's seed and the original, not on the order of calls.
    """

    def __init__(self, seed: int, avoid: Iterable[str] = (), locale: str = "en_US") -> None:
        self.seed = seed
        self.locale = locale
        self.avoid = {a.casefold() for a in avoid}
        self.memo: dict[tuple[str, str], list[str]] = {}
        self.claimed: set[str] = set()
        self._faker: Faker | None = None

    def _fk(self, *salt: object) -> Faker:
        if self._faker is None:
            from faker import Faker

            self._faker = Faker(self.locale)
        self._faker.seed_instance(_stable(self.seed, *salt))
        return self._faker

    def replace(self, original: str, kind: str, n: int = 1) -> list[str]:
        """``n`` distinct replacements for ``original`` (the same every time for this request)."""
        key = (kind, original)
        have = self.memo.setdefault(key, [])
        make = _MAKERS.get(kind, _MAKERS["account"])
        attempt = 0
        while len(have) < n:
            cand = make(self._fk(kind, original, attempt), original)
            attempt += 1
            folded = cand.casefold()
            if folded == original.casefold() or folded in self.avoid or folded in self.claimed:
                if attempt > 200:
                    raise ValueError(f"no {kind} replacement found after {attempt} attempts")
                continue
            self.claimed.add(folded)
            have.append(cand)
        return have[:n]
