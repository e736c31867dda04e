"""Shared by the knowledge tests in tests/unit and tests/integration."""
from __future__ import annotations

WEEK = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


YEAR = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
        "November", "December"]


CAPITAL = {"France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
           "Russia": "Moscow", "China": "Beijing", "Egypt": "Cairo", "Greece": "Athens", "England": "London"}


NUMBER = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "ten": 10, "twelve": 12}
