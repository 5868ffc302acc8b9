"""medseg.preprocess"""
