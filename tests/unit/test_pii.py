"""Typed detection of structured personal data and its format-preserving generic replacements.

Every value here is synthetic (test card and IBAN numbers, fictional people and domains).
"""

from __future__ import annotations

import itertools
import re

import phonenumbers
import pytest
from stdnum import iban, luhn

from gpu_runtime.pipeline.pii import Replacer, detect, request_seed


def kinds(text: str) -> list[tuple[str, str]]:
    return [(d.kind, d.text) for d in detect(text)]


# ---------------------------------------------------------------- detection


def test_email_not_also_a_url_or_handle():
    found = kinds("Write to minseo.bae87@example-mail.com or to j_doe@uni.ac.uk today.")
    assert found == [("email", "minseo.bae87@example-mail.com"), ("email", "j_doe@uni.ac.uk")]


def test_urls_with_scheme_www_and_bare_domain_with_path():
    found = kinds("See https://www.minseo-bae.com/blog/2020?x=1, www.example.org and quietpine.net/about.")
    assert found == [
        ("url", "https://www.minseo-bae.com/blog/2020?x=1"),
        ("url", "www.example.org"),
        ("url", "quietpine.net/about"),
    ]


def test_card_numbers_need_a_valid_luhn_digit():
    assert kinds("Card 4111 1111 1111 1111 expired.") == [("card", "4111 1111 1111 1111")]
    assert kinds("Card 5500-0000-0000-0004 works.") == [("card", "5500-0000-0000-0004")]
    # One digit changed: no longer a card (a long number is still an account-like identifier).
    assert kinds("Card 4111 1111 1111 1112 expired.") == [("account", "4111 1111 1111 1112")]


def test_iban_needs_a_valid_checksum():
    assert kinds("IBAN DE89 3704 0044 0532 0130 00.") == [("iban", "DE89 3704 0044 0532 0130 00")]
    assert kinds("Pay GB82WEST12345698765432 now") == [("iban", "GB82WEST12345698765432")]
    assert all(k != "iban" for k, _ in kinds("IBAN DE88 3704 0044 0532 0130 00."))


def test_account_numbers_stated_as_such_and_long_numbers():
    assert kinds("Her account number is 12345678.") == [("account", "12345678")]
    assert kinds("policy no. POL-99812 renewed") == [("account", "POL-99812")]
    assert kinds("Customer ID: 0042 7781 ok") == [("account", "0042 7781")]
    assert kinds("reference 93817265") == [("account", "93817265")]
    assert kinds("In 1987 she had 42 dogs.") == []  # short numbers are not identifiers


@pytest.mark.parametrize(
    "text",
    [
        "Read pages 100-200 of the book.",
        "She lived there from 1987-1990 and again in 2001.",
        "Flight 1234 leaves at 10:30 with 250 people.",
        "The population grew to 1,234,567 by then.",
        "Harry Potter went to Hogwarts with Ron Weasley and Hermione Granger.",
        "It costs $4,500.00, or 3.14159 times more.",
    ],
)
def test_plain_numbers_and_prose_are_not_personal_data(text: str):
    assert kinds(text) == []


@pytest.mark.parametrize(
    "date",
    [
        "12 March 1987",
        "1987-03-12",
        "03/12/1987",
        "March 12th, 1987",
        "12th of March 1987",
        "12.03.1987",
        "Mar. 12, 1987",
    ],
)
def test_date_formats(date: str):
    assert kinds(f"She was born on {date} in Busan.") == [("date", date)]


def test_impossible_dates_are_not_dates():
    assert all(k != "date" for k, _ in kinds("Code 31/31/1987 and 1987-13-40."))


def test_phones_from_libphonenumber_and_stated_as_such():
    assert kinds("Call +1 415-555-0132 or +44 20 7946 0958.") == [
        ("phone", "+1 415-555-0132"),
        ("phone", "+44 20 7946 0958"),
    ]
    assert kinds("His phone number is 555-0132.") == [("phone", "555-0132")]


def test_handles_and_stated_usernames():
    assert kinds("Follow @minseo_b on Mastodon.") == [("handle", "@minseo_b")]
    assert kinds("Her username is zucchini_fan42.") == [("handle", "zucchini_fan42")]
    assert kinds("Her gamertag: NightOwl77") == [("handle", "NightOwl77")]
    assert kinds("The username is the same.") == []  # a grammar word is no username


def test_street_addresses():
    assert kinds("She lives at 221B Baker Street, Apt 4, London.") == [
        ("address", "221B Baker Street, Apt 4")
    ]
    assert kinds("Office: 1600 Elm Grove Ave. since 2010") == [("address", "1600 Elm Grove Ave.")]
    assert kinds("Wohnt in der Hauptstraße 12 in Berlin") == [("address", "Hauptstraße 12")]


def test_spans_do_not_overlap_and_point_into_the_text():
    text = "Mail a.b@c.io, card 4111111111111111, born 1987-03-12, call +1 415-555-0132, @ab_c."
    found = detect(text)
    assert [d.kind for d in found] == ["email", "card", "date", "phone", "handle"]
    for a, b in itertools.pairwise(found):
        assert a.end <= b.start
    assert all(text[d.start : d.end] == d.text for d in found)


# ---------------------------------------------------------------- replacements


def one(kind: str, original: str, seed: int = 11) -> str:
    return Replacer(seed, avoid=[original]).replace(original, kind)[0]


def shape(s: str) -> str:
    return re.sub(r"[A-Z]", "A", re.sub(r"[a-z]", "a", re.sub(r"\d", "9", s)))


@pytest.mark.parametrize("card", ["4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005"])
def test_card_replacement_keeps_grouping_and_luhn(card: str):
    for seed in range(20):
        new = one("card", card, seed)
        assert new != card and shape(new) == shape(card)
        assert luhn.is_valid(re.sub(r"\D", "", new))
        assert new[0] == card[0]  # the network digit is generic


def test_iban_replacement_same_country_length_valid_checksum():
    for original in ["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432", "FR1420041010050500013M02606"]:
        new = one("iban", original)
        assert new != original and len(new) == len(original) and new[:2] == original[:2]
        assert shape(new[4:]) == shape(original[4:]) or original.startswith("FR")
        assert iban.is_valid(new)


@pytest.mark.parametrize(
    ("original", "pattern"),
    [
        ("12 March 1987", r"\d{1,2} [A-Z][a-z]+ \d{4}"),
        ("1987-03-12", r"\d{4}-\d{2}-\d{2}"),
        ("03/12/1987", r"\d{2}/\d{2}/\d{4}"),
        ("March 12th, 1987", r"[A-Z][a-z]+ \d{1,2}(st|nd|rd|th), \d{4}"),
        ("12.03.87", r"\d{2}\.\d{2}\.\d{2}"),
    ],
)
def test_date_replacement_keeps_the_format(original: str, pattern: str):
    for seed in range(15):
        new = one("date", original, seed)
        assert new != original and re.fullmatch(pattern, new), new
        assert kinds(f"on {new} ok") == [("date", new)]  # still a valid date of the same kind


def test_phone_replacement_keeps_shape_and_country_code():
    for original in ["+1 415-555-0132", "(020) 7946 0958", "+44 20 7946 0958"]:
        new = one("phone", original)
        assert new != original and shape(new) == shape(original)
        if original.startswith("+"):
            assert new.split()[0] == original.split()[0]
    us = one("phone", "+1 415-555-0132")
    assert phonenumbers.is_valid_number(phonenumbers.parse(us, "US"))


def test_email_url_handle_address_account_shapes():
    email = one("email", "minseo.bae87@example-mail.com")
    assert re.fullmatch(r"[a-z]+\.[a-z]+\d+@[\w-]+\.com", email), email
    url = one("url", "https://www.minseo-bae.com/blog/2020")
    assert re.fullmatch(r"https://www\.[\w-]+\.com/\w+/\d{4}", url), url
    handle = one("handle", "@minseo_b")
    assert handle.startswith("@") and handle != "@minseo_b" and re.fullmatch(r"@\w+", handle)
    address = one("address", "221B Baker Street, Apt 4")
    assert re.fullmatch(r"\d{3}[A-Z] [A-Z][a-z]+ Street, Apt \d", address), address
    account = one("account", "POL-99812")
    assert shape(account) == "AAA-99999" and account != "POL-99812"


def test_replacements_are_seeded_consistent_and_distinct():
    originals = [("card", "4111 1111 1111 1111"), ("date", "12 March 1987"), ("email", "a.b@example.com")]
    r1, r2 = Replacer(5), Replacer(5)
    first = [r1.replace(o, k, 2) for k, o in originals]
    # The same request gets the same replacements, in any order of calls.
    assert [r2.replace(o, k, 2) for k, o in reversed(originals)] == list(reversed(first))
    assert [r1.replace(o, k, 2) for k, o in originals] == first  # consistent within the request
    assert all(len(set(pair)) == 2 for pair in first)  # n distinct translations
    assert [Replacer(6).replace(o, k, 2) for k, o in originals] != first  # another seed, others


def test_a_replacement_never_equals_an_original():
    original = "4111 1111 1111 1111"
    first = Replacer(3).replace(original, "card")[0]
    # If the first candidate is another original of the request, it is skipped.
    new = Replacer(3, avoid=[original, first]).replace(original, "card")[0]
    assert new not in (original, first)
    # Distinct originals never share a replacement.
    r = Replacer(3)
    outs = {r.replace(f"{d:02d}/01/1990", "date")[0] for d in range(1, 29)}
    assert len(outs) == 28


def test_request_seed_depends_on_seed_and_corpus():
    assert request_seed(0, ["a", "b"]) == request_seed(0, ["a", "b"])
    assert request_seed(0, ["a", "b"]) != request_seed(1, ["a", "b"])
    assert request_seed(0, ["a", "b"]) != request_seed(0, ["a", "c"])


def test_recall_on_generated_values_of_every_kind():
    """Values Faker generates (other formats than the hand-written cases above) are found whole."""
    from faker import Faker

    fk = Faker("en_US")
    fk.seed_instance(123)
    formats = ["%d %B %Y", "%Y-%m-%d", "%m/%d/%Y", "%B %d, %Y", "%d.%m.%Y"]
    cases = {
        "email": ("Her e-mail is {}.", fk.email),
        "phone": ("You can call her on {}.", fk.phone_number),
        "card": ("Her card number is {}.", fk.credit_card_number),
        "iban": ("Her IBAN is {}.", fk.iban),
        "date": ("She was born on {}.", lambda: fk.date_of_birth().strftime(fk.random.choice(formats))),
        "url": ("Her blog is at {}.", lambda: fk.url() + fk.uri_path()),
        "address": ("She lives at {}.", fk.street_address),
        "handle": ("Follow her at {} for news.", lambda: "@" + fk.user_name()),
        "account": ("Her account number is {}.", lambda: str(fk.random_number(digits=10, fix_len=True))),
    }
    for kind, (template, make) in cases.items():
        found = 0
        for _ in range(40):
            value = make()
            found += (kind, value) in kinds(template.format(value))
        assert found >= 38, (kind, found)
