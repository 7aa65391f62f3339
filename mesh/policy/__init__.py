"""Per-service call policy: default deny, decided from the verified chain."""

from mesh.policy.rules import *  # noqa: F403
