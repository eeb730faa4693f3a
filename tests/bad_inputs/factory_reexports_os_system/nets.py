from os import system  # re-exported: still the standard library's
