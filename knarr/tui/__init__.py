"""The Textual operator console (``knarr console``): a client of a node's cockpit.

Nothing outside this package imports it; the headless node never loads Textual.
"""
