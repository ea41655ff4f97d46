"""Stateless fingerprints from log templates.

A message's fingerprint is a hash of its *template* (the text with its variable parts
masked) and the service. It is a pure function of (message, service): the same line gets
the same key on any worker, after any restart and in any order, so an incident can be
keyed by the fingerprint a line gets when it arrives. (A template miner such as drain3
generalises its templates as lines arrive, so a line's first template is often not its
cluster's last; that would need shared, persisted state to give stable keys.)

What counts as a variable, found in one combined regex pass that only starts at token
boundaries, then one pass that collapses runs:

- dates and times (a time of day with its fraction of a second, ``20:54:03.455``), UUIDs,
  URLs, e-mail addresses, IPv4/IPv6 addresses, a longer run of colon-separated hex groups
  (six or more, one holding a digit: ``FF:F2:9F:16:EB:27:00:0D:60:E9:14:D8``), host:port,
  file paths, quoted values without spaces, durations and sizes with their unit
  (``3001ms``, ``1.5 sec``, ``4 KB``, ``<1 sec``), an empty ``()``;
- any other token holding a digit (``8812``, ``0x1f``, ``blk_-123``, ``host7``), the rule
  drain3 applies with ``parametrize_numeric_tokens``;
- the value of ``key=value`` (``user=root``), a quoted one whatever it holds
  (``tag="View Lock"``), except for keys that carry the message itself (``msg=``, ``error=``,
  ``level=``, ``status=`` ...: ``msg="connection refused"`` stays text);
- the account name after the word "user" when it ends its clause (``for user alice by``,
  ``invalid user bob [preauth]``): account names are data, and personal data at that.

A run of values separated only by punctuation or spaces (``<*>:<*>``, ``<*> (<*>)``, a list
of ids of any length) becomes one ``<*>``. Words without digits are otherwise kept: one
incident that hides another is worse than one error seen as two incidents, so when in
doubt a word is part of the template.

Multi-line Python tracebacks are keyed by their exception types, the shape of each
exception's message (its words, values masked as above) and the application's own frames
(file, function and source line; library and standard-library frames only when there is
no other); Java stack traces by their exception types and frames (class and method). Line
numbers and install paths are never part of a key.

The rules are written for Python's ``re`` (sre), which defines them. An ASCII line is
masked by PCRE2's JIT running the same patterns when the ``pcre2`` package is present and
masks a set of check lines exactly as sre does; any other line, and any line PCRE2 gives
up on, is masked by sre (see "the fast engine" below).
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

FINGERPRINT_VERSION = "1"
"""Part of every key's hash. Keys differ whenever templates do, so it stays: a new grouping version
changes the keys of only the messages whose templates it changes."""
GROUPING_VERSION = 3
"""The grouping algorithm and its settings, stored with each incident: 2 gave Python tracebacks
message shapes and in-app frames; 3 masks a quoted value after key= whatever it holds, a run of six
or more colon-separated hex groups, and a time of day with a fraction of a second (which version 2
read as an IPv6 address followed by a number). A new version keeps its predecessors' keys reachable
(previous_keys) so that open incidents are not split."""
MAX_EXPLAINED = 50

MASK = "<*>"
MAX_INPUT_CHARS = 64_000
"""The Event contract's message limit; longer text given straight to fingerprint() is cut first."""
MAX_TEMPLATE_CHARS = 2000
"""Longer templates are cut; the cut comes after masking, so it falls at the same place for any values."""
MAX_TRACE_FRAMES = 60
TITLE_CHARS = 80

_MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
    r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?"
)
_WEEKDAY = r"(?:Mon(?:day)?|Tue(?:s|sday)?|Wed(?:nesday)?|Thu(?:r|rs|rsday)?|Fri(?:day)?|Sat(?:urday)?|Sun(?:day)?),?"
_TIME_HOUR = r"\d{1,2}"
_TIME = _TIME_HOUR + r":\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:\s?[AaPp][Mm])?"
_TZ = r"(?:\s?(?:Z|UTC|GMT|[+-]\d{2}:?\d{2}|[A-Z]{3,4}(?=\s\d{4})))?"
# Units of durations and sizes: a number with one of these is one value ("17 ms", "4 KB").
_UNIT = (
    r"(?:ns|us|µs|ms|s|sec|secs|second|seconds|m|min|mins|minute|minutes|h|hr|hrs|hour|hours|"
    r"d|day|days|[KMGTP]i?B|[kKmMgGtT][bB]?|B|b|bytes?|bps|[KMG]bps|%)"
)
# key=value pairs whose value is the message itself, not data about it.
_TEXT_KEYS = ("msg", "message", "error", "err", "event", "level", "lvl", "severity", "status", "state", "reason")
# The end of a value: a space, the end, closing punctuation or a full stop ending a sentence.
# What \s matches (str.isspace), spelt out for character classes: sre tests a class of characters with one
# table look-up, while a class holding \s also calls the Unicode space test (tests/unit/test_fingerprint.py
# checks that the two are the same set).
_SPACE = "\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_END = rf"(?=$|[{_SPACE},;:)\]}}|\"']|\.(?:\s|$))"
_OCTET = r"\d\d?\d?"  # one to three digits (as \d{1,3}, written to start with a plain digit)
# Characters that make up one "word" when judging whether a token holds a digit.
_W = rf"[^{_SPACE}=,;:()\[\]{{}}<>\"'|]"
_KV = rf"[^{_SPACE},;&()\[\]{{}}<>\"'|]"  # a character of the value of key=value

# IPv6 addresses (with a digit). Version 2 ended one at anything but a word character or ":", so a time
# of day with a fraction of a second ("20:54:03.455") was an address and a number, and an address ending
# in IPv4 ("::ffff:10.0.0.1") stopped at its first "."; version 3 does not end one before ".<digit>".
_IPV6_V2 = (r"(?<![\w:.])(?=[0-9a-fA-F]{0,4}:)(?=[0-9a-fA-F:]{0,44}\d)(?:[0-9a-fA-F]{0,4}:){2,7}"
            r"(?:[0-9a-fA-F]{1,4}|\d{1,3}(?:\.\d{1,3}){3})(?:%\w+)?(?![\w:])")
_IPV6 = _IPV6_V2.removesuffix(r"(?![\w:])") + r"(?![\w:]|\.\d)"
# A run of six or more colon-separated hex groups holding a digit, longer than an IPv6 address can be
# (hardware ids, serial numbers: "FF:F2:9F:16:EB:27:00:0D:60:E9:14:D8"); version 2 kept its groups
# without a digit as words. (Not after a ":", where it would start inside a longer run. Most tokens that
# start with a hex digit have no ":" after it, so that is looked for before the digit; the groups are read
# possessively: giving one back could only end the run before a ":" or a word character.)
_HEX_RUN = (r"[0-9a-fA-F](?<!:.)(?=[0-9a-fA-F]{0,3}+:)(?=[0-9a-fA-F:]*\d)[0-9a-fA-F]{0,3}+"
            r"(?::[0-9a-fA-F]{1,4}+){5,}+(?![\w:])")
# A quoted value after key=, whatever it holds ('tag="View Lock"'), except after the keys that name
# what happened (msg="connection refused" stays text). A quoted value without spaces is masked by the
# quoted-value rules before these; version 2 kept one with spaces as words.
_TEXT_KEY_GUARD = "".join(rf"(?<!\b{k}=.)" for k in _TEXT_KEYS)
_KEY_DQUOTED = rf"\"(?<=[\w.\]-]=.){_TEXT_KEY_GUARD}[^\"]{{1,200}}\""
_KEY_SQUOTED = rf"'(?<=[\w.\]-]=.){_TEXT_KEY_GUARD}[^']{{1,200}}'"

# Each rule that can start with an opening character class or literal does (a look-behind comes
# after the first character, written one character longer, "(?<!x.)"): sre tests a branch's first
# class before it enters the branch, so at a token no rule can start with the rule costs one test.
# ("[0-9a-f][0-9a-f]{7}" is "[0-9a-f]{8}", "\d(?<![\w.:]\d)" is "(?<![\w.:])\d".)
_PARTS = [
    # Dates and times: "Tue Jul 26 05:47:42 2005", "Jul  1 07:57:30", "2024-05-01T10:00:00Z".
    # (The look-ahead, the first letters of the names, spares every other token the two lists of names.)
    rf"(?=[ADFJMNOSTW])(?:{_WEEKDAY}\s+)?{_MONTH}\s+\d{{1,2}}(?:,?\s+{_TIME}{_TZ})?(?:,?\s+\d{{4}})?(?!\w)",
    rf"\d\d\d\d-\d\d-\d\d(?:[T ]{_TIME})?{_TZ}",
    rf"\d\d?[/.-]{_MONTH}[/.-]\d{{2,4}}(?::{_TIME})?",
    # UUIDs, URLs, e-mail addresses.
    r"[0-9a-fA-F][0-9a-fA-F]{7}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
    rf"[a-zA-Z][a-zA-Z0-9+.-]{{1,15}}://[^{_SPACE}\"'<>]+",
    r"[\w.!#$%&'*+/=?^`{|}~-][\w.!#$%&'*+/=?^`{|}~-]{0,63}@[\w-]+(?:\.[\w-]+)+",
    # Addresses: IPv6 (with a digit), IPv4 and host names with a port ("db.example.com:5432").
    _IPV6,
    _HEX_RUN,
    rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}(?::\d{{1,5}})?(?![\w.])",
    r"[A-Za-z0-9-][A-Za-z0-9-]*(?:\.[A-Za-z0-9-]+)+:\d{1,5}(?![\w.])",
    # File paths: /a/b, ./a, ~/a, C:\a\b (a single "/word" is a path too).
    # ("./", "../", "~/" or "/", told apart by the first character, looked back at.)
    r"[./~](?<![\w.:/~].)(?:(?<=\.)\.?/|(?<=~)/|(?<=/))[\w.@%+~$:-]+(?:/[\w.@%+~$:-]*)*",
    rf"[A-Za-z]:\\[^{_SPACE}\"'<>|]*",
    # Quoted values without spaces ('alice', "x-17"); a quoted sentence is text and stays.
    rf"'[^'{_SPACE}]{{1,200}}'(?!\w)",
    rf"\"[^\"{_SPACE}]{{1,200}}\"(?!\s*:)",
    _KEY_DQUOTED,
    _KEY_SQUOTED,
    # Durations and sizes with a unit, also "1.5 sec", "12.0 KB", "01:07:47".
    # (Not when the "unit" starts an e-mail address: "0 T|@a.com" is a number and an address.)
    # (The number is "[<>~≈]?[-+]?\d++", its first character read first: a digit, a sign or a comparison.)
    rf"[<>~≈+\-\d](?:(?<=\d)\d*+|(?<=[<>~≈])[-+]?\d++|(?<=[-+])\d++)(?:\.\d++)?\s?{_UNIT}{_END}"
    rf"(?![^{_SPACE}@]*@[\w-]+\.)",
    rf"\d(?<![\w.:]\d)\d?{_TIME.removeprefix(_TIME_HOUR)}(?![\w:])",  # _TIME, its "\d{1,2}" as "\d\d?"
    # An empty value in brackets: "connection from <*> () at".
    r"[(\[{][)\]}](?<=\(\)|\[\]|\{\})(?<!\S..)(?!\S)",
    # An account name after "user" that ends its clause: "for user alice by", "invalid user bob [".
    r"[\w.@-](?<=(?<![\w-])[Uu]ser .)[\w.@-]{0,63}(?=$|\s*[\[(,;]|\s+(?:from|by|on|at|to|for|in|with|via)\b)",
    # Any other token holding a digit (hex numbers and hashes included).
    # (The whole run of word characters, when it holds a digit: after a first digit, the rest of it.)
    rf"{_W}(?:(?<=\d){_W}*+|{_W}*\d{_W}*)",
    # The value of key=value, whatever it holds (an empty value stays empty), except for the
    # keys that name what happened (msg=, error=, level=, ...).
    rf"{_KV}(?<=[\w.\]-]=.){_TEXT_KEY_GUARD}{_KV}*",
]
# What each of _PARTS is, in the same order, as `erdu incidents why` names it.
RULE_NAMES = (
    "date and time", "date", "date", "uuid", "url", "e-mail address", "ipv6 address", "run of hex groups",
    "ipv4 address", "host:port", "file path", "file path", "quoted value", "quoted value",
    "quoted value of key=value", "quoted value of key=value", "duration or size", "time of day",
    "empty brackets", "account name after 'user'", "token with a digit", "value of key=value",
)
assert len(RULE_NAMES) == len(_PARTS)
# Where a value can start. Every value starts a token, so one look-behind skips the positions
# inside words at once. No rule can start at a space, nor at a plain word: ASCII letters, perhaps
# a "." or ":", then a space, "," ";", a bracket or the end (so no digit, "@", "://", ":port", "-"
# in it), unless it follows "=" (key=value) or "user " (an account name) or is a month or weekday
# name. Most tokens are plain words; skipping them here, before any rule is tried, is most of the speed.
# (The first letter is read first, so a token that starts with no letter fails at once; the look-behinds
# after it look one character further back, and "(?<!(?=...).)" says the word starting at that letter
# is no month or weekday name. The quantifiers are possessive: giving back a letter or the "." could
# never lead to a match.)
_NO_DATE_NAME = rf"(?<!(?=(?:{_WEEKDAY}|{_MONTH})(?![A-Za-z])).)"


def _start(present: Collection[str] = ("=", "u")) -> str:
    """Where a value can start, in a line holding the features in present (see _FEATURES): a look-behind
    for an "=" or "user " that the line does not hold could never see one, so it is left out."""
    after = ("(?<!=.)" if "=" in present else "") + ("(?<!ser .)" if "u" in present else "") + _NO_DATE_NAME
    return rf"(?<!{_W})(?!\s|[A-Za-z]{after}[A-Za-z]*+[.:]?+(?:[{_SPACE},;()\[\]]|$))"


_START = _start()  # every look-behind: the patterns of version 2 and of explain() use this one
# Speed: a rule that needs a character the line does not hold cannot match anywhere in it, and
# leaving it out of the alternation changes nothing else (the first rule that matches still wins),
# so each line is masked by the alternation of only the rules it could meet. The e-mail rule alone
# scans up to 64 characters at every word. What each rule needs ("" = nothing checked; digits are
# not: nearly every line holds one, and looking for one would cost more than it saves):
_NEEDS = ("", "", "", "", ":", "@", ":", ":", "", ":", "/", ":", "'", '"', '="', "='", "", ":", "", "u", "", "=")
assert len(_NEEDS) == len(_PARTS)
_FEATURES = ("@", ":", "/", "'", '"', "=", "u")
_BY_FEATURES: dict[int, re.Pattern[str]] = {}


def _mask_re(text: str) -> re.Pattern[str]:
    """The alternation of the rules that could match in text (compiled once per combination, at most 128)."""
    have = (("@" in text) | (":" in text) << 1 | ("/" in text) << 2 | ("'" in text) << 3 | ('"' in text) << 4
            | ("=" in text) << 5 | ("ser " in text) << 6)
    pattern = _BY_FEATURES.get(have)
    if pattern is None:
        present = {f for i, f in enumerate(_FEATURES) if have >> i & 1}
        parts = [p for p, needs in zip(_PARTS, _NEEDS) if set(needs) <= present]
        pattern = _BY_FEATURES[have] = re.compile(
            _start(present) + "(?:" + "|".join(f"(?:{p})" for p in parts) + ")") if parts \
            else re.compile(r"(?!)")
    return pattern


# Version 2's rules, for previous_keys only: its IPv6 rule, without the rules version 3 added. Compiled
# when first needed (ingest asks once per new group), so the hot path never pays for them.
_PARTS_V2 = [_IPV6_V2 if p is _IPV6 else p for p in _PARTS if p not in (_HEX_RUN, _KEY_DQUOTED, _KEY_SQUOTED)]


@functools.cache
def _mask_re_v2() -> re.Pattern[str]:
    return re.compile(_START + "(?:" + "|".join(f"(?:{p})" for p in _PARTS_V2) + ")")


# The same alternatives, each in a named group, so an explanation can say which rule masked a value.
# Only `explain` and splits use it: the hot path keeps the faster unnamed patterns, and a worker that
# never explains never compiles it (compiled when first needed, as the patterns of _mask_re are).
@functools.cache
def _named_re() -> re.Pattern[str]:
    return re.compile(_START + "(?:" + "|".join(f"(?P<r{i}>{p})" for i, p in enumerate(_PARTS)) + ")")



# --- the fast engine ---------------------------------------------------------------------
# The rules above are Python (sre) regular expressions, and they stay the definition. sre tries a pattern
# that starts with a look-behind at every character of a line, inside words too, and that stepping is most
# of a line's cost. PCRE2 (the pcre2 package), compiled to machine code by its JIT, runs the same pattern
# two to three times faster. On ASCII text the two engines give the same matches: both search leftmost
# first and backtrack alike, and \w, \d and \b mean the same on ASCII; only \s and \S, which PCRE2 reads
# without the separators \x1c-\x1f, are spelt out for it. So mask() gives PCRE2 the lines that are ASCII
# (nearly every log line) and sre the rest, and sre everything when pcre2 is missing, fails the check
# below when first used, or gives up on a line (its JIT stack has a limit that long runs of paths reach).
# tests/unit/test_fingerprint.py compares the two engines on generated lines and on every rule's cases;
# bench/grouping.py compares them on every line it measures.
def _for_pcre2(pattern: str) -> str:
    r"""An sre pattern as PCRE2 reads it alike on ASCII text: \s and \S outside character classes spelt out
    (none of the rules has one inside a class), newlines as sre sees them (only "\n")."""
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            escape = pattern[i:i + 2]
            if escape in (r"\s", r"\S"):
                if in_class:
                    raise ValueError(f"{escape} inside a character class: spell it out ({pattern[max(0, i - 20):i + 20]!r})")
                out.append(f"[{_SPACE}]" if escape == r"\s" else f"[^{_SPACE}]")
            else:
                out.append(escape)
            i += 2
            continue
        if c == "[" and not in_class:
            in_class = True
            if pattern.startswith("[^]", i) or pattern.startswith("[]", i):
                raise ValueError(f"a class opening with ']' is read differently by PCRE2: {pattern[i:i + 20]!r}")
        elif c == "]" and in_class:
            in_class = False
        out.append(c)
        i += 1
    return "(*LF)" + "".join(out)


# Lines that meet every rule, and the lines the rules' comments give: the fast engine is used only when
# it masks each of them as sre does.
_ENGINE_CHECK = (
    "Tue Jul 26 05:47:42 2005 from 10.0.0.1:5432 to db.example.com:5432 in 3001ms (4 KB) <1 sec",
    "2024-05-01T10:00:00Z job 6f1c2a3b-1d2e-4f5a-8b9c-0d1e2f3a4b5c at https://x.example/a?b=1 by a.b@c.io",
    "addr fe80::1%eth0 ::ffff:10.0.0.1 20:54:03.455 FF:F2:9F:16:EB:27:00:0D:60:E9:14:D8 at /var/log/x.log",
    "open ./a ~/b C:\\tmp\\x 'alice' \"x-17\" tag=\"View Lock\" msg=\"connection refused\" user=root ()",
    "Failed password for invalid user bob from 10.1.2.3 port 22 ssh2 [preauth] for user alice by x",
    "blk_-123 host7 0x1f 1.5 sec 12.0 KB 01:07:47 key='a b' 17 ms ~3 >2s 5\x1cms Jan\x1d5 1\t2 \x00 9 May 3, 2024",
)


def _pcre2_masker() -> Callable[[str], str] | None:
    """A function that masks values as _sre_masked does, giving PCRE2 the ASCII lines; None if pcre2 is
    missing or masks any of _ENGINE_CHECK otherwise."""
    try:
        import pcre2
        from pcre2 import _cy
    except ImportError:
        return None
    try:
        code = pcre2.compile(_for_pcre2(_START + "(?:" + "|".join(f"(?:{p})" for p in _PARTS) + ")"))._pcre2_code
        # The package's Pattern.sub checks its arguments in Python on each call, which costs more than the
        # substitution itself; its compiled substitute is the same call without them.
        substitute, options, gave_up = _cy.substitute, _cy.SubstituteOption.GLOBAL, pcre2.LibraryError

        def masked(text: str) -> str:
            if text.isascii():
                try:
                    return substitute(code, MASK, text, 0, options)[0]
                except gave_up:   # its JIT stack ran out; sre has no such limit
                    pass
            return _mask_re(text).sub(MASK, text)

        if any(masked(line) != _sre_masked(line) for line in _ENGINE_CHECK):
            return None
        return masked
    except Exception:   # a version of the package without these, or a PCRE2 that reads the rules otherwise
        return None


def _sre_masked(text: str) -> str:
    return _mask_re(text).sub(MASK, text)


def _values_masked(text: str) -> str:
    """text with each value replaced by MASK (at each start the first rule that matches wins).

    The first call chooses the engine and puts its function in this one's place, so a process that
    never masks a line compiles neither pattern, and later calls go straight to the engine."""
    global _values_masked, _ENGINE
    fast = _pcre2_masker()
    _ENGINE, _values_masked = ("pcre2", fast) if fast is not None else ("re", _sre_masked)
    return _values_masked(text)


_ENGINE = ""   # set by the first _values_masked call


def engine_disagreements(lines: Iterable[str]) -> list[str]:
    """The lines whose values PCRE2 masks otherwise than sre: none, as long as the engines agree (benches
    check this on the lines they measure). Empty without pcre2, where sre masks everything."""
    fast = _pcre2_masker()
    return [] if fast is None else [line for line in lines if fast(line) != _sre_masked(line)]


def engine() -> str:
    """The engine that masks ASCII lines: "pcre2", or "re" where pcre2 is missing or reads the rules otherwise
    (the keys are the same; only the speed differs)."""
    if not _ENGINE:
        _values_masked("")
    return _ENGINE


# A value wholly in brackets is a value; runs of values with only punctuation between are one.
_BRACKETED = re.compile(r"[(\[{]<\*>[)\]}]")
_RUN = re.compile(r"<\*>(?:[\s,;:|#/+*-]*<\*>)+")
_SPACES = re.compile(r"\s+")

# --- multi-line traces -------------------------------------------------------------------
_PY_TRACE_START = "Traceback (most recent call last):"
_PY_FRAME = re.compile(r'^\s+File "([^"]*)", line \d+(?:, in (\S+))?')
_PY_EXC = re.compile(r"^([A-Za-z_][\w.]*)(?::|$)")
_JAVA_FRAME = re.compile(r"^\s*at\s+([\w$.<>/\[\]-]+?)\s*\(")
_JAVA_MORE = re.compile(r"^\s*\.\.\.\s*\d+\s+(?:more|common frames omitted)")
_JAVA_CAUSE = re.compile(r"^\s*(Caused by|Suppressed):\s*")
_JAVA_EXC = re.compile(r"((?:[A-Za-z_$][\w$]*\.)*[A-Z][\w$]*(?:Exception|Error|Throwable|Failure|Fault))(?=:|\s|$)")
_FRAME_DIGITS = re.compile(r"\d+")
# Frames of the standard library and installed packages: not the application's code.
_LIBRARY_PATH = re.compile(r"[/\\](?:site|dist)-packages[/\\]|[/\\]lib[/\\]python\d[\d.]*[/\\]|^<frozen |[/\\]Lib[/\\]")
_CARETS = re.compile(r"[\^~\s]+")

# --- titles ------------------------------------------------------------------------------
_EXC_SUFFIX = r"(?:Exception|Error|Exit|Interrupt|Failure|Fault)"
_EXC_WORDS = re.compile(_EXC_SUFFIX)
_EXC_NAME = re.compile(rf"(?<![\w$.])(?:[A-Za-z_$][\w$]*\.)*([A-Z][\w$]*{_EXC_SUFFIX})\b")
_LEVEL = r"(?:TRACE|DEBUG|INFO|NOTICE|WARN|WARNING|ERROR|ERR|CRITICAL|CRIT|FATAL|SEVERE|ALERT|EMERG)"
_LOG_PREFIX = re.compile(rf"^(?:(?:<\*>|[\[(]?{_LEVEL}[\])]?:?)\s+)+")


@dataclass(frozen=True, slots=True)
class Template:
    """A message's template, its stable key and a short title (made when first asked for: ingest
    needs it once per new group, not once per line)."""

    key: str
    template: str
    given_title: str | None = field(default=None, repr=False, compare=False)

    @property
    def title(self) -> str:
        """The exception type and what follows, else the error phrase (see make_title)."""
        return self.given_title if self.given_title is not None else make_title(self.template)


def mask(text: str) -> str:
    """The single-line template of text: variable parts replaced by <*>, spaces squeezed."""
    text = _values_masked(text)
    if text.count(MASK) > 1:
        if "(<*>)" in text or "[<*>]" in text or "{<*>}" in text:
            text = _BRACKETED.sub(MASK, text)
        text = _RUN.sub(MASK, text)
    # What _SPACES.sub(" ", text).strip() gives (\s is str.isspace), faster; most lines are already so (every
    # space but " " is unprintable), and the check costs less than splitting them.
    if "  " in text or not text.isprintable() or text[:1] == " " or text[-1:] == " ":
        return " ".join(text.split())
    return text


def _mask_v2(text: str) -> str:
    """mask(text) as grouping version 2 made it (one alternation of all its rules: leaving out the rules a
    line cannot meet changes nothing, so this is what version 2 gave)."""
    text = _mask_re_v2().sub(MASK, text)
    if text.count(MASK) > 1:
        if "(<*>)" in text or "[<*>]" in text or "{<*>}" in text:
            text = _BRACKETED.sub(MASK, text)
        text = _RUN.sub(MASK, text)
    return " ".join(text.split())


CACHED_CHARS = 400
"""Messages up to this long are remembered (the last CACHE_SIZE of them): logs repeat their lines,
a storm repeats one line, and a pure function may answer a repeat from memory."""
CACHE_SIZE = 16384


def fingerprint(message: str, service: str | None = None) -> Template:
    """The template, stable key and title of a message from a service."""
    if len(message) <= CACHED_CHARS:
        return _remembered(message, service)
    return fingerprint_uncached(message, service)


def fingerprint_uncached(message: str, service: str | None = None) -> Template:
    """fingerprint() computed afresh (what a message not seen lately costs)."""
    text = message[:MAX_INPUT_CHARS].strip()
    title = None
    if "\n" not in text:
        template = mask(text)[:MAX_TEMPLATE_CHARS]
    elif (trace := _trace_template(text)) is not None:
        template, title = trace
    else:
        template = "\n".join(mask(line) for line in text.splitlines() if line.strip())[:MAX_TEMPLATE_CHARS]
    return _new_template(template_key(template, service), template, title)


def _template(text: str, masker: Callable[[str], str]) -> str:
    """fingerprint_uncached's template of a stripped text, each line masked by masker (previous_keys)."""
    if "\n" not in text:
        return masker(text)[:MAX_TEMPLATE_CHARS]
    if (trace := _trace_template(text, masker)) is not None:
        return trace[0]
    return "\n".join(masker(line) for line in text.splitlines() if line.strip())[:MAX_TEMPLATE_CHARS]


# Template(key, template, title) without running the frozen dataclass's __init__: the same three
# slots set by their descriptors, not by object.__setattr__ from a Python-level __init__ (that
# call costs a line's fingerprint a tenth of its pure-Python work).
_set_key, _set_template, _set_title = Template.key.__set__, Template.template.__set__, Template.given_title.__set__


def _new_template(key: str, template: str, title: str | None) -> Template:
    made = object.__new__(Template)
    _set_key(made, key)
    _set_template(made, template)
    _set_title(made, title)
    return made


@dataclass(frozen=True)
class Slot:
    """One <*> of a single-line template: the text it stands for and the rules that masked it."""

    text: str
    rules: tuple[str, ...]


def slots(text: str) -> tuple[str, list[Slot]]:
    """mask(text) with, for each <*> in it, the original text and the rules behind it (slower than mask)."""
    spans: list[tuple[int, int, tuple[str, ...]]] = []
    out: list[str] = []
    pos = 0
    for m in _named_re().finditer(text):
        out.append(text[pos:m.start()])
        out.append(MASK)
        spans.append((m.start(), m.end(), (RULE_NAMES[int(m.lastgroup[1:])],)))
        pos = m.end()
    out.append(text[pos:])
    masked = "".join(out)
    if masked.count(MASK) > 1:
        for pattern, step in ((_BRACKETED, "value in brackets"), (_RUN, "run of values")):
            masked, spans = _collapse(masked, spans, pattern, step)
    return _SPACES.sub(" ", masked).strip(), [Slot(text[a:b], rules) for a, b, rules in spans]


def _collapse(masked: str, spans: list[tuple[int, int, tuple[str, ...]]], pattern: re.Pattern[str],
              step: str) -> tuple[str, list[tuple[int, int, tuple[str, ...]]]]:
    """pattern.sub(MASK, masked), keeping one span per <*>: a replaced run spans all it covered."""
    out: list[str] = []
    kept: list[tuple[int, int, tuple[str, ...]]] = []
    pos = index = 0
    for m in pattern.finditer(masked):
        before = masked[pos:m.start()]
        n_before, n_in = before.count(MASK), m.group().count(MASK)
        kept += spans[index:index + n_before]
        covered = spans[index + n_before:index + n_before + n_in]
        index += n_before + n_in
        if covered:
            rules = tuple(dict.fromkeys(r for _, _, rs in covered for r in rs)) + (step,)
            # A bracketed value keeps its brackets in the original text it stands for.
            a, b = covered[0][0], covered[-1][1]
            if pattern is _BRACKETED:
                a, b = a - 1, b + 1
            kept.append((a, b, rules))
        out += [before, MASK]
        pos = m.end()
    out.append(masked[pos:])
    kept += spans[index:]
    return "".join(out), kept


def explain(message: str, service: str | None = None) -> dict[str, object]:
    """How a message got its key: the step that made the template, the template, the key and what was masked."""
    tpl = fingerprint(message, service)
    text = message[:MAX_INPUT_CHARS].strip()
    if "\n" not in text:
        step, masked = "single line: values masked by rule, runs of values joined", slots(text)[1]
    elif text.startswith(_PY_TRACE_START) or _PY_TRACE_START in text:
        step = ("python traceback: exception types, their message shapes and the application's own frames "
                "(file, function, source line); line numbers, install paths and library frames left out")
        last = next((line for line in reversed(text.splitlines()) if _PY_EXC.match(line)), "")
        masked = slots(last)[1]
    elif tpl.template.startswith("Stack "):
        step, masked = "java stack trace: exception types and frames (class and method), digits left out", []
    else:
        step = "several lines, each masked as a single line"
        masked = [s for line in text.splitlines()[:50] if line.strip() for s in slots(line)[1]]
    return {
        "version": GROUPING_VERSION, "step": step, "template": tpl.template, "key": tpl.key,
        "masked": [{"text": s.text[:200], "rules": list(s.rules)} for s in masked[:MAX_EXPLAINED]],
        "masked_total": len(masked),
    }


def previous_keys(message: str, service: str | None = None) -> dict[int, str]:
    """The keys earlier grouping versions gave this message, where they differ from today's (version -> key).

    Version 2 changed Python tracebacks; version 3 the masking of single lines (and so of each line of
    several, and of exception messages). A message whose template no version changed has none. Ingest
    asks once per new group, so version 2's masking is run here, not on the hot path.
    """
    text = message[:MAX_INPUT_CHARS].strip()
    now = fingerprint(message, service).key
    keys: dict[int, str] = {}
    lines = text.splitlines()
    if len(lines) > 1 and _PY_TRACE_START in text:
        then = _python_trace_v1(lines)
        if then is not None and (key := template_key(then[0], service)) != now:
            keys[1] = key
    if (key := template_key(_template(text, _mask_v2), service)) != now:
        keys[2] = key
    return keys


_remembered = functools.lru_cache(maxsize=CACHE_SIZE)(fingerprint_uncached)


def clear_fingerprint_cache() -> None:
    """Forget the remembered messages (for measurements that must start cold)."""
    _remembered.cache_clear()


def template_key(template: str, service: str | None = None) -> str:
    """The stable hex key of a (service, template) pair: the hash of "version \\x1f service \\x1f template"."""
    prefix = _KEY_PREFIXES.get(service)
    if prefix is None:
        prefix = _key_prefix(service)
    h = prefix.copy()   # the prefix hashed once per service; hashing on from a copy gives the same digest
    try:
        # Without an error handler encode() is faster, and it gives the same bytes whenever it succeeds.
        data = template.encode()
    except UnicodeEncodeError:   # a lone surrogate: written as "surrogatepass" writes it
        data = template.encode("utf-8", "surrogatepass")
    h.update(data)
    return h.hexdigest()


_KEY_PREFIXES: dict[str | None, hashlib.blake2b] = {}
MAX_KEY_PREFIXES = 1024
"""Services whose hashed key prefix is kept (a few in practice; past this many the others are hashed each time)."""


def _key_prefix(service: str | None) -> hashlib.blake2b:
    """A hash of the key's text before the template, kept for the next key of the same service."""
    prefix = hashlib.blake2b(f"{FINGERPRINT_VERSION}\x1f{service or ''}\x1f".encode("utf-8", "surrogatepass"),
                             digest_size=8)
    if len(_KEY_PREFIXES) < MAX_KEY_PREFIXES:
        _KEY_PREFIXES[service] = prefix
    return prefix


def make_title(template: str) -> str:
    """A short readable title: the exception type and what follows, else the error phrase."""
    first = template.split("\n", 1)[0]
    exc = _EXC_NAME.search(first) if _EXC_WORDS.search(first) else None
    if exc:
        phrase = exc.group(1) + first[exc.end():]
    else:
        phrase = _LOG_PREFIX.sub("", first) or first
    return _shorten(phrase.strip(" :-|")) or "(empty message)"


def _shorten(text: str, limit: int = TITLE_CHARS) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0] if " " in text[:limit] else text[:limit]
    return cut.rstrip(" ,;:-") + "…"


def _trace_template(text: str, masker: Callable[[str], str] = mask) -> tuple[str, str] | None:
    """Template and title of a Python traceback or a Java stack trace, else None."""
    lines = text.splitlines()
    if _PY_TRACE_START in text:
        return _python_trace(lines, masker)
    if any(_JAVA_FRAME.match(line) for line in lines[:MAX_TRACE_FRAMES]):
        return _java_trace(lines, masker)
    return None


def _python_trace(lines: list[str], masker: Callable[[str], str] = mask) -> tuple[str, str] | None:
    """A traceback's exception types, their message shapes and its in-app frames.

    A frame is file, function and its source line (stripped): the line number moves with any
    edit above it, the source line only when that code changes. Frames of the standard library
    and installed packages are left out when any frame is the application's own, so an upgrade
    of a library or of Python does not split a bug; a frame repeated by recursion counts once.
    """
    types: list[str] = []
    shapes: list[str] = []
    frames: list[tuple[str, bool]] = []
    message = ""
    in_trace = False
    awaiting_source = False
    for line in lines:
        if line.startswith(_PY_TRACE_START) or line.strip() == _PY_TRACE_START:
            in_trace = True
            continue
        if not in_trace:
            continue
        frame = _PY_FRAME.match(line)
        if frame:
            path, func = frame.group(1), frame.group(2) or "?"
            frames.append((f"{_basename(path)}:{func}", not _LIBRARY_PATH.search(path)))
            awaiting_source = True
            continue
        if line[:1].isspace() or not line.strip():
            stripped = line.strip()
            if awaiting_source and stripped and not _CARETS.fullmatch(stripped) and not stripped.startswith("["):
                name, in_app = frames[-1]
                frames[-1] = (f"{name}:{_SPACES.sub(' ', stripped)[:200]}", in_app)
            awaiting_source = False
            continue  # carets, "[Previous line repeated ...]", blank lines
        awaiting_source = False
        exc = _PY_EXC.match(line)
        if exc:
            types.append(exc.group(1))
            message = line[exc.end():].strip()
            shapes.append(masker(message)[:200])   # its shape: a KeyError's key, a port, a count masked
            in_trace = False
    if not types:
        return None
    chosen = [name for name, in_app in frames if in_app] or [name for name, _ in frames]
    kept: list[str] = []
    for name in chosen:  # recursion: a frame that repeats the one before it counts once
        if not kept or kept[-1] != name:
            kept.append(name)
    exceptions = " <- ".join(f"{t}({s})" for t, s in reversed(list(zip(types, shapes))))
    template = f"Traceback {exceptions} at {' > '.join(kept[-MAX_TRACE_FRAMES:])}"[:MAX_TEMPLATE_CHARS * 4]
    title = types[-1].rsplit(".", 1)[-1] + (f": {mask(message)}" if message else "")
    return template, _shorten(title)


def _python_trace_v1(lines: list[str]) -> tuple[str, str] | None:
    """Version 1 (for previous_keys): exception types and every frame, file and function only."""
    types: list[str] = []
    frames: list[str] = []
    message = ""
    in_trace = False
    for line in lines:
        if line.startswith(_PY_TRACE_START) or line.strip() == _PY_TRACE_START:
            in_trace = True
            continue
        if not in_trace:
            continue
        frame = _PY_FRAME.match(line)
        if frame:
            if len(frames) < MAX_TRACE_FRAMES:
                path, func = frame.group(1), frame.group(2) or "?"
                frames.append(f"{_basename(path)}:{func}")
            continue
        if line[:1].isspace() or not line.strip():
            continue  # source lines under a frame, carets, blank lines
        exc = _PY_EXC.match(line)
        if exc:
            types.append(exc.group(1))
            message = line[exc.end():].strip()
            in_trace = False
    if not types:
        return None
    template = f"Traceback {' <- '.join(reversed(types))} at {' > '.join(frames)}"[:MAX_TEMPLATE_CHARS * 4]
    title = types[-1].rsplit(".", 1)[-1] + (f": {mask(message)}" if message else "")
    return template, _shorten(title)


def _java_trace(lines: list[str], masker: Callable[[str], str] = mask) -> tuple[str, str] | None:
    types: list[str] = []
    frames: list[str] = []
    message = ""
    previous = ""
    for line in lines:
        frame = _JAVA_FRAME.match(line)
        if frame:
            if previous and not types:
                head = _JAVA_EXC.search(previous)
                if head:
                    types.append(head.group(1))
                    message = previous[head.end():].lstrip(": ").strip()
                else:  # a throwable whose name says nothing: its masked header stands in
                    types.append(masker(previous)[:200])
            if len(frames) < MAX_TRACE_FRAMES:
                frames.append(_FRAME_DIGITS.sub("#", frame.group(1)))
            previous = ""
            continue
        if _JAVA_MORE.match(line) or not line.strip():
            continue
        cause = _JAVA_CAUSE.match(line)
        if cause:
            exc = _JAVA_EXC.search(line, cause.end())
            if exc:
                types.append(("~" if cause.group(1) == "Suppressed" else "") + exc.group(1))
            previous = ""
            continue
        previous = line
    if not types:
        return None
    template = f"Stack {' <- '.join(types)} at {' > '.join(frames)}"[:MAX_TEMPLATE_CHARS * 4]
    title = types[0].rsplit(".", 1)[-1] + (f": {mask(message)}" if message else "")
    return template, _shorten(title)


def _basename(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]
