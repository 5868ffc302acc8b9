"""medseg.validation"""
