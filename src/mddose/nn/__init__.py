"""mddose.nn"""
