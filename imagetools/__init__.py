"""imagetools: personalize Mender disk images in mass production.

See docs/api.md ("Library API") for the functions a build pipeline can call.
"""

from .errors import ImageToolsError

__all__ = ["ImageToolsError"]
__version__ = "0.1.0"
