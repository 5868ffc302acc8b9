"""medseg.deid"""
