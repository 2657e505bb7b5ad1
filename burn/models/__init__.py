"""Student, teacher and classifier networks."""
