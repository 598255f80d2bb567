"""What people read: score statistics, the text histogram, and the threshold report's pictures."""
