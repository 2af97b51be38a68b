"""mddose.train"""
