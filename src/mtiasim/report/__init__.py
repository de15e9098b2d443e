"""Views of a timed run: activity per op, PE and unit (`activity`), the Perfetto trace (`trace`), the HTML
report (`html`)."""
