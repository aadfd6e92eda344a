"""Deployment target profiles (``targets/*.toml``): what each board is and how to build for it."""
from mntvm.targets.profiles import Profile, format_profiles, get_profile, list_profiles

__all__ = ["Profile", "format_profiles", "get_profile", "list_profiles"]
