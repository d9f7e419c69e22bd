"""Which host root made an engine object: labels that let `gc` tell its own leftovers apart.

One docker engine may serve several host roots (two accounts, or one machine under two inventory
names with different roots). Session ids are random, so an object whose session this root has no
record of may be another root's, alive. Every container, network and volume a session makes is
labelled with the root's id (`<root>/root-id`) and path:

- our id: ours (owned while our record of its session is not purged);
- another id whose root still holds that id: another root's, never touched;
- another id whose root is gone (no such directory, or a root made anew with another id): an
  orphan of a root that no longer exists;
- no root label (made by an agent before these labels, or by hand): ours only if this root has a
  record or a directory of its session, else unattributed and left alone.

A root judged gone because its path does not exist here (ENOENT) is no proof: it may be another
user's home, not mounted now, or a root in another mount namespace. gc (agent_host/gc.py) never
removes on that ground alone a running container, nor a volume or network one uses.

Python 3.9 compatible.
"""

from __future__ import annotations

import errno
import os
from typing import Callable, Dict, Optional

from agent_host import layout
from agent_host.wire import IDENTITY_RE

LABEL_ROOT = "jackin.root"  # the root id of the host root that made the object
LABEL_ROOT_PATH = "jackin.root-path"  # that root's path, to see whether it still exists

OURS = "ours"
OTHER_ROOT = "other-root"  # another root's, alive (or one we cannot read): left alone
GONE_ROOT = "gone-root"  # made by a root that no longer exists
UNATTRIBUTED = "unattributed"  # no root label and nothing of it here: left alone

# What reading another root's id found: its id, or one of these.
ROOT_MISSING = "missing"  # the directory does not exist (nothing in the way of seeing that)
ROOT_UNKNOWN = "unknown"  # unreadable, or no id in it: it may be alive


def root_labels(root: str) -> Dict[str, str]:
    """The labels every engine object of a session of `root` carries (its id made if missing)."""
    from agent_host.facts import root_id

    labels = {LABEL_ROOT_PATH: os.path.abspath(root)}
    found = root_id(root)
    if found is not None:
        labels[LABEL_ROOT] = found
    return labels


def read_root_id(path: str) -> str:
    """The id of the root at `path`, ROOT_MISSING when that directory surely does not exist, or
    ROOT_UNKNOWN (no permission to look, no id, a damaged one)."""
    try:
        os.lstat(path)
    except OSError as exc:
        return ROOT_MISSING if exc.errno == errno.ENOENT else ROOT_UNKNOWN
    try:
        with open(layout.root_id_file(path), encoding="ascii", errors="replace") as handle:
            value = handle.read(64).strip().lower()
    except OSError:
        return ROOT_UNKNOWN
    return value if IDENTITY_RE.match(value) else ROOT_UNKNOWN


def owner(
    labels: Optional[Dict[str, str]],
    known_here: bool,
    root_id: Optional[str],
    root_path: str,
    read_id: Callable[[str], str] = read_root_id,
) -> str:
    """Whose an engine object is, from its labels. `known_here`: this root has a record or a
    directory of the object's session. Pure but for `read_id` (another root's id, by path)."""
    labels = labels or {}
    made_by = labels.get(LABEL_ROOT)
    if not made_by:
        return OURS if known_here else UNATTRIBUTED
    if root_id is not None and made_by == root_id:
        return OURS
    path = labels.get(LABEL_ROOT_PATH) or ""
    if not path.startswith("/"):
        return OTHER_ROOT  # cannot look at it: assume it is alive
    if os.path.normpath(path) == os.path.normpath(root_path):
        # This very directory, under another id: the root was removed and made anew.
        return GONE_ROOT if root_id is not None else OTHER_ROOT
    found = read_id(path)
    if found == ROOT_MISSING or (found != ROOT_UNKNOWN and found != made_by):
        return GONE_ROOT
    return OTHER_ROOT


def this_root_id(root: str) -> Optional[str]:
    """This root's id as it is (never made here: a root without one has no labelled object)."""
    found = read_root_id(root)
    return None if found in (ROOT_MISSING, ROOT_UNKNOWN) else found
