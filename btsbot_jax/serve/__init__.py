"""Scoring alerts where they arrive: files, folders and archives (`batch`), and a Kafka topic (`stream`)."""
