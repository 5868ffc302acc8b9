"""medseg.writers"""
