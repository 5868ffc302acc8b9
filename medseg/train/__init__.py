"""medseg.train"""
