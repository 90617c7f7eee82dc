"""One module per metric family; each class is reached through :func:`prefscore.load`."""
