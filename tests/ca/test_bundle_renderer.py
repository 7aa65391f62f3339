"""ca.bundle.BundleRenderer: the bundle a CA publishes keeps each key's rendered entry between
publications; what it writes is, byte for byte, what rendering everything anew writes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from ca.authority import CertificateAuthority
from ca.bundle import BundleRenderer, render_bundle


def test_the_kept_entries_render_what_a_fresh_render_does(
        ca_factory: Callable[..., CertificateAuthority]) -> None:
    ca = ca_factory(intermediate=True)
    ca.issue_many([f"s-{i}" for i in range(20)])
    renderer = BundleRenderer()

    def both(active: list, sequence: int) -> bytes:  # type: ignore[type-arg]
        kept = renderer.render(ca.roots, ca.intermediates, active, sequence=sequence)
        assert kept == render_bundle(ca.roots, ca.intermediates, active, sequence=sequence)
        return kept

    active = ca._registry.bundle_keys(int(time.time()))
    both(active, 1)
    assert set(renderer._entries) == {k.thumbprint for k in active}
    # keys leave (revoked, expired): their entries go at the next render; the bound is the bundle
    both(active[5:], 2)
    assert set(renderer._entries) == {k.thumbprint for k in active[5:]}
    # keys come and go at once, in another order
    ca.issue_many(["t-1", "t-2"])
    later = ca._registry.bundle_keys(int(time.time()))
    both(list(reversed(later)), 3)
    assert set(renderer._entries) == {k.thumbprint for k in later}
    # every entry carries the intermediates: other intermediates render every entry anew
    other = ca_factory(intermediate=True)
    kept = renderer.render(ca.roots, other.intermediates, later, sequence=4)
    assert kept == render_bundle(ca.roots, other.intermediates, later, sequence=4)


def test_the_published_bundle_is_a_fresh_render(
        ca_factory: Callable[..., CertificateAuthority]) -> None:
    ca = ca_factory(intermediate=True)
    for i in range(3):
        ca.issue_many([f"s-{i}-{j}" for j in range(5)])
    ca.revoke(name="s-0-1")
    published = ca.bundle_path.read_bytes()
    sequence = json.loads(published)["spiffe_sequence"]
    active = ca._registry.bundle_keys(int(time.time()))
    assert published == render_bundle(ca.roots, ca.intermediates, active, sequence=sequence)
