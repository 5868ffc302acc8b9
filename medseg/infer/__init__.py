"""medseg.infer"""
