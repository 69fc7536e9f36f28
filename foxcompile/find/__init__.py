"""find: locate forgetting attention in FX graphs (matcher.Matcher) and explain every decision."""
from .matcher import Matcher
from .site import Decline, Site

__all__ = ["Matcher", "Site", "Decline"]
