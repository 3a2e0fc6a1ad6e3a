"""placeholder"""


def cases() -> list:
    return []
