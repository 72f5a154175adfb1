"""Members (the ``User`` table) and their accounts."""
