"""Where the project's own files live: the gin configs next to the package (editable install)."""
import os

GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin")
