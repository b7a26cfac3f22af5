"""Versioned payloads of nova-usage-ext."""


def register_all():
    # Importing the modules registers their classes.
    __import__('nova_usage_ext.objects.usage')
    __import__('nova_usage_ext.objects.alert')
    __import__('nova_usage_ext.objects.host')
