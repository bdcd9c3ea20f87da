"""Secrets are removed from values before they are audited, by name and by look."""

from __future__ import annotations

from typing import Any

import pytest

from mcp_sandbox_proxy.audit.redact import MAX_DEPTH, REDACTED, redact, redact_text

GITHUB_TOKEN = "ghp_" + "A1b2C3d4E5" * 4
PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
    "-----END OPENSSH PRIVATE KEY-----"
)


@pytest.mark.parametrize(
    "name",
    [
        "token",
        "password",
        "secret",
        "authorization",
        "Authorization",
        "key",
        "apiKey",
        "api_key",
        "X-Api-Key",
        "APIKey",
        "client_secret",
        "accessToken",
        "refresh-token",
        "dbpassword",
        "passwd",
        "Cookie",
        "private_key",
        "aws_secret_access_key",
    ],
)
def test_values_under_secret_names_are_redacted(name: str) -> None:
    """A value stored under a name made of secret words is replaced whole."""
    assert redact({name: "hunter2", "path": "/tmp/x"}) == {
        name: REDACTED,
        "path": "/tmp/x",
    }


@pytest.mark.parametrize(
    "name", ["max_tokens", "keyboard", "monkey", "author", "path", "tokens_used"]
)
def test_names_that_only_resemble_secret_words_are_kept(name: str) -> None:
    """Words that merely contain a secret word are not secrets."""
    assert redact({name: "plain value"}) == {name: "plain value"}


def test_a_secret_name_hides_a_whole_nested_value() -> None:
    """Everything under a secret name goes, whatever its shape."""
    assert redact({"credentials": {"user": "bob", "pin": 1234}}) == {
        "credentials": REDACTED
    }


def test_names_listed_by_the_policy_are_redacted_in_any_spelling() -> None:
    """Extra names match the same way as the built-in words."""
    value = {"accountNumber": "12345678", "ssn": "078-05-1120", "city": "Oslo"}

    redacted = redact(value, ["account-number", "SSN"])

    assert redacted == {"accountNumber": REDACTED, "ssn": REDACTED, "city": "Oslo"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Bearer abcdefgh12345678", f"Bearer {REDACTED}"),
        (
            "Authorization: Basic dXNlcjpwYXNzd29yZA==",
            f"Authorization: Basic {REDACTED}",
        ),
        (
            "https://bob:hunter2@example.com/repo",
            f"https://bob:{REDACTED}@example.com/repo",
        ),
        (
            "login --password=hunter2 --verbose",
            f"login --password={REDACTED} --verbose",
        ),
        ('{"api_key": "abc123"}', f'{{"api_key": "{REDACTED}"}}'),
        ("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI", f"AWS_SECRET_ACCESS_KEY={REDACTED}"),
        (f"use {GITHUB_TOKEN} to push", f"use {REDACTED} to push"),
        ("key AKIAIOSFODNN7EXAMPLE here", f"key {REDACTED} here"),
        ("sk-proj-" + "x1" * 16, REDACTED),
        ("xoxb-1234567890-abcdef", REDACTED),
        ("sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc", REDACTED),
        ("AIza" + "SyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY", REDACTED),
        (
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N",
            REDACTED,
        ),
        (f"{PRIVATE_KEY}\nafter", f"{REDACTED}\nafter"),
    ],
)
def test_strings_shaped_like_credentials_are_redacted_in_place(
    text: str, expected: str
) -> None:
    """The credential goes; the text around it stays readable."""
    assert redact_text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "the bearer of good news",
        "max_tokens=512",
        "https://example.com/user@host",
        "a sketch of the basic idea",
        "ghp_short",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    """Prose and settings that only resemble credentials are not touched."""
    assert redact_text(text) == text


def test_redaction_returns_a_copy_and_leaves_the_input_alone() -> None:
    """The caller's arguments are not modified."""
    arguments: dict[str, Any] = {"token": "t0ps3cret", "items": [{"password": "p"}]}

    redacted = redact(arguments)

    assert redacted == {"token": REDACTED, "items": [{"password": REDACTED}]}
    assert arguments == {"token": "t0ps3cret", "items": [{"password": "p"}]}


def test_credentials_inside_lists_and_tuples_are_found() -> None:
    """Sequences are walked like mappings; tuples come back as lists."""
    assert redact(("ok", ["x", f"token={GITHUB_TOKEN}"])) == [
        "ok",
        ["x", f"token={REDACTED}"],
    ]


def test_long_strings_are_clipped_and_marked_with_their_length() -> None:
    """A clipped string keeps its start and says how long it was."""
    assert redact({"content": "a" * 100}, max_string_chars=10) == {
        "content": "aaaaaaaaaa...[clipped: 100 chars in all]"
    }


def test_a_credential_cut_by_clipping_leaves_no_part_behind() -> None:
    """A token straddling the clipping point is redacted before the cut."""
    text = "x" * 29 + " " + GITHUB_TOKEN + " " + "y" * 100

    clipped = redact(text, max_string_chars=40)

    assert GITHUB_TOKEN[:10] not in clipped
    assert clipped.startswith("x" * 29 + " " + REDACTED)


def test_nesting_past_the_depth_limit_is_cut() -> None:
    """Absurd nesting is replaced, far from the recursion limit."""
    value: Any = "bottom"
    for _ in range(MAX_DEPTH + 10):
        value = [value]

    text = repr(redact(value))

    assert "too deeply nested" in text
    assert "bottom" not in text


def test_other_objects_are_redacted_as_their_text() -> None:
    """An object that is not JSON is turned into its text and scanned."""

    class Header:
        def __str__(self) -> str:
            return "Bearer abcdefgh12345678"

    assert redact({"header": Header()}) == {"header": f"Bearer {REDACTED}"}
