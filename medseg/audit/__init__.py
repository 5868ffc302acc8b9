"""medseg.audit"""
