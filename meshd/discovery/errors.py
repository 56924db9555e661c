"""Errors raised by the Nostr discovery room (one base class, specific subclasses)."""

from __future__ import annotations


class DiscoveryError(Exception):
    """Base class for every error raised by :mod:`meshd.discovery`."""


class InvalidEvent(DiscoveryError):
    """A Nostr event failed structural, id or signature validation."""

    def __init__(self, reason: str, event_id: str | None = None) -> None:
        super().__init__(reason if event_id is None else f"{reason} (event {event_id})")
        self.reason = reason
        self.event_id = event_id


class MalformedMessage(DiscoveryError):
    """A relay sent a websocket message that is not a well-formed NIP-01 relay message."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidListing(DiscoveryError):
    """A kind-31990 event's content is not a valid ``MeshListing`` JSON object."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KeyFileError(DiscoveryError):
    """The Nostr key file is unreadable, malformed or has unsafe permissions."""


class NoRelayAvailable(DiscoveryError):
    """No Nostr relay could be connected at all."""

    def __init__(self, tried: int) -> None:
        super().__init__(f"Could not connect to any Nostr relay (tried {tried})")
        self.tried = tried
