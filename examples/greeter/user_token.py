"""Stands in for a login service: signs a user token with auth's SVID.

    python -m examples.greeter.user_token USER --identity DIR --jkt THUMBPRINT
        [--audience frontend] [--scope greet] [--ttl 900] > user.token

In a real mesh a login service (the demo's ``auth``) checks a password or an OIDC login first;
this script checks nothing, which is why it needs auth's private key: whoever holds that key
can speak for any user. The token is a ``user+jwt`` (spec 3.2) for the audience's edge port,
bound to the user's DPoP key by its thumbprint (``cnf.jkt``, spec 4.7: the login is where the
user proves that key), printed on stdout alone.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from mesh.errors import MeshError
from mesh.identity.svid import StaticSvid
from mesh.tokens import TokenSigner


def sign(identity: Path, user: str, *, jkt: str, audience: str = "frontend",
         scope: str = "greet", ttl: int = 900) -> str:
    """A user token for ``user``, signed with the SVID in ``identity`` (auth's folder)."""
    svid = StaticSvid.from_pem((identity / "svid.pem").read_bytes(),
                               (identity / "svid_key.pem").read_bytes(),
                               (identity / "svid_bundle.pem").read_bytes()).current()
    signer = TokenSigner(svid.private_key, svid.chain)
    aud = svid.spiffe_id.trust_domain.service(audience)
    return signer.user_token(user, [aud], scope=scope, ttl=ttl, jkt=jkt)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.greeter.user_token",
                                     description="Sign a user token with auth's SVID.")
    parser.add_argument("user", metavar="USER", help="the user's id (the token's sub)")
    parser.add_argument("--identity", required=True, type=Path, metavar="DIR",
                        help="auth's SVID folder (required)")
    parser.add_argument("--jkt", required=True, metavar="THUMBPRINT",
                        help="the user's DPoP key thumbprint (outside_client --new-key prints "
                        "it) (required)")
    parser.add_argument("--audience", default="frontend", metavar="SERVICE",
                        help="the edge service the token is for (default: %(default)s)")
    parser.add_argument("--scope", default="greet", help="space-separated scopes "
                        "(default: %(default)s)")
    parser.add_argument("--ttl", type=int, default=900, metavar="SECONDS",
                        help="lifetime (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        token = sign(args.identity, args.user, jkt=args.jkt, audience=args.audience,
                     scope=args.scope, ttl=args.ttl)
    except OSError as err:
        print(f"user_token: error: cannot read {err.filename}: {err.strerror}", file=sys.stderr)
        return 2
    except MeshError as err:
        print(f"user_token: error: {err}", file=sys.stderr)
        return 2
    print(token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
