"""Inventory: TOML files describing hosts and groups."""

from jackin_remote.inventory.loader import load_inventory
from jackin_remote.inventory.model import BUILTIN_LOCAL, Host, Inventory, Limits
from jackin_remote.inventory.selectors import select_hosts

__all__ = ["BUILTIN_LOCAL", "Host", "Inventory", "Limits", "load_inventory", "select_hosts"]
